import ArgumentParser
import Foundation
import RootfsKit

struct SizeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "size",
        abstract: "Show the largest directories and packages of a rootfs directory or archive, to trim images.",
        discussion: """
        Package sizes come from the files each package installed, summed in the tree (dpkg's \
        /var/lib/dpkg/info/*.list, apk's database), else from the installed size the database \
        records (rpm). Accepts a rootfs directory, a tar or cpio archive (compressed or not), a disk (raw, qcow2, \
        vhd, vhdx, vmdk) with ext4 or erofs, an erofs, squashfs or ISO image, or oci:DIR / docker-archive:FILE.
        """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "A rootfs directory, archive or image (see rootfs ls).") var path: String
    @Option(help: ArgumentHelp("Show this many directories and packages.", valueName: "N")) var top = 15
    @Option(help: ArgumentHelp("List directories up to this depth (/usr/lib is 2).", valueName: "N")) var depth = 3
    @Flag(help: "Print one JSON document.") var json = false

    func validate() throws {
        guard top > 0 else { throw ValidationError("--top must be at least 1") }
        guard depth > 0 else { throw ValidationError("--depth must be at least 1") }
    }

    func run() async throws {
        let (path, top, depth, json) = (path, top, depth, json)
        try await CommandRunner.run(json: json) {
            let exports = EngineImageExports()
            defer { exports.removeAll() }
            let opened = try await ImageOpener.open(try await exports.resolve(path), option: "PATH")
            defer { opened.close() }
            let report = try await SizeReport.make(image: opened, top: top, depth: depth)
            if json { try printJSON(report) } else { print(report.text) }
        }
    }
}
