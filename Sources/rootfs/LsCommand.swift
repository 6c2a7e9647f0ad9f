import ArgumentParser
import Foundation
import RootfsKit

struct LsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List a directory inside an image (any format rootfs writes), as ls -l does.",
        discussion: """
        IMAGE is a rootfs directory, a tar or initrd (plain or compressed), a disk (raw, qcow2, vhd, vhdx, vmdk) \
        with ext4 or erofs, an erofs, squashfs or ISO image, or oci:DIR / docker-archive:FILE. PATH (default /) \
        is resolved inside the image, its links followed as the guest would (never on the host). Each line: \
        mode, owner (uid gid), size (major, minor for a device), modification time (UTC), name, link target. \
        Names that are not printable UTF-8 are shown escaped (\\n, \\t, \\xNN; a backslash is doubled).
        """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The image.") var image: String
    @Argument(help: "The directory (or file) inside the image.") var path: String = "/"

    func run() async throws {
        let (image, path) = (image, path)
        try await CommandRunner.run {
            let exports = EngineImageExports()
            defer { exports.removeAll() }
            let opened = try await ImageOpener.open(try await exports.resolve(image, option: "IMAGE"))
            defer { opened.close() }
            let index = try ImageIndex(opened.source)
            let lines = try ImageListing.lines(index, path: Array(path.utf8), image: image)
            if !lines.isEmpty { print(lines.joined(separator: "\n")) }
        }
    }
}
