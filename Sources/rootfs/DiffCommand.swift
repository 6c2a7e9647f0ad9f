import ArgumentParser
import Foundation
import RootfsKit

struct DiffCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "Compare two trees (directories, tars or initrds) entry by entry.",
        discussion: """
        Prints one line per entry that differs: only in A, only in B, or changed (type, mode, owner, size, \
        mtime, link target, hard link, device, content sha256). Exit status: 0 identical, 1 different, \
        2 on an error. Use it to find what broke a reproducible build: rootfs diff first.tar second.tar
        """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The first tree: a directory, tar or initrd.") var a: String
    @Argument(help: "The second tree.") var b: String
    @Flag(name: .customLong("ignore-mtime"), help: "Do not compare modification times.") var ignoreMtime = false

    func run() async throws {
        let (a, b, ignoreMtime) = (a, b, ignoreMtime)
        let console = global.makeConsole()
        do {
            try await CommandRunner.run {
                let exports = EngineImageExports()
                defer { exports.removeAll() }
                let left = try TreeSource.open(try await exports.resolve(a, option: "A"), option: "A")
                let right = try TreeSource.open(try await exports.resolve(b, option: "B"), option: "B")
                let differences = try TreeDiff(ignoreMtime: ignoreMtime).compare(left, right)
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
