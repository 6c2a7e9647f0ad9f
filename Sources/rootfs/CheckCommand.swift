import ArgumentParser
import Foundation
import RootfsKit

struct CheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check", abstract: "Check that a rootfs directory has an init and an agent; write nothing.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The rootfs directory.") var rootfs: String
    @Flag(name: .customLong("agent-init"), help: "Require the agent to be /sbin/init.") var agentInit = false
    @Flag(help: "Print one JSON document (ok, problems, package database and count).") var json = false

    /// `--json` output.
    struct Report: Encodable {
        var rootfs: String
        var ok: Bool
        var agentInit: Bool
        var problems: [String]
        var packageDatabase: String
        var packages: Int
    }

    func run() async throws {
        let (rootfs, agentInit, json) = (rootfs, agentInit, json)
        try await CommandRunner.run(json: json) {
            guard json else {
                try RootfsChecker.requireTree(at: rootfs, agentInit: agentInit)
                print("\(rootfs): ok (init and agent present\(agentInit ? ", agent is init" : ""))")
                return
            }
            guard FS.isDirectory(rootfs) else {
                throw RootfsError("\(rootfs) is not a directory", hint: "give the rootfs directory that `rootfs build` wrote")
            }
            let problems = RootfsChecker(tree: GuestTree(root: FS.absolute(rootfs))).problems(agentInit: agentInit)
            let inventory = try await PackageInventory.read(tree: FS.absolute(rootfs))
            try printJSON(Report(rootfs: rootfs, ok: problems.isEmpty, agentInit: agentInit, problems: problems,
                                 packageDatabase: inventory.database.rawValue, packages: inventory.packages.count))
            if !problems.isEmpty { throw ExitCode.failure }
        }
    }
}
