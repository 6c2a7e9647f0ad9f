import ArgumentParser
import Foundation
import RootfsKit

struct DiffCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "Compare two trees (directories, tars, initrds, disks, erofs, squashfs or ISO images) entry by entry.",
        discussion: """
        Prints one line per entry that differs: only in A, only in B, or changed (type, mode, owner, size, \
        mtime, link target, hard link, device, content sha256). Exit status: 0 identical, 1 different, \
        2 on an error. Use it to find what broke a reproducible build: rootfs diff first.tar second.tar. A and B may be any \
        image rootfs writes (see rootfs ls): rootfs diff debian.tar debian.img finds nothing when the disk holds \
        the tar's tree (ext4's own /lost+found aside).
        """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The first tree: a directory, archive or image (see rootfs ls).") var a: String
    @Argument(help: "The second tree.") var b: String
    @Flag(name: .customLong("ignore-mtime"), help: "Do not compare modification times.") var ignoreMtime = false

    func run() async throws {
        let (a, b, ignoreMtime) = (a, b, ignoreMtime)
        let console = global.makeConsole()
        do {
            try await CommandRunner.run {
                let exports = EngineImageExports()
                defer { exports.removeAll() }
                let left = try await ImageOpener.open(try await exports.resolve(a, option: "A"), option: "A")
                defer { left.close() }
                let right = try await ImageOpener.open(try await exports.resolve(b, option: "B"), option: "B")
                defer { right.close() }
                // ext4's /lost+found (made for e2fsck by every ext4 writer) is no part of the tree
                // written into the disk: on the ext4 side alone it is no difference.
                let lostFound = Array("lost+found".utf8)
                let differences = try TreeDiff(ignoreMtime: ignoreMtime).compare(left.source, right.source).filter { d in
                    !(d.path == lostFound && d.fields == ["directory"]
                      && ((d.kind == .onlyInA && left.isExt4) || (d.kind == .onlyInB && right.isExt4)))
                }
                for d in differences { console.result(d.description) }
                if !differences.isEmpty {
                    console.info("\(differences.count) entr\(differences.count == 1 ? "y differs" : "ies differ")")
                    throw ExitCode(3)
                }
                console.info("identical")
            }
        } catch let code as ExitCode {
            // CommandRunner reports errors with status 1; `diff` keeps 1 for "different".
            throw code.rawValue == 3 ? ExitCode(1) : code.rawValue == 1 ? ExitCode(2) : code
        }
    }
}
