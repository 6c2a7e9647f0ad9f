import ArgumentParser
import Foundation
import RootfsKit

struct CheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check", abstract: "Check that a rootfs (a directory, archive or image: see rootfs ls) has an init and an agent; write nothing.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The rootfs directory, archive or image.") var rootfs: String
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
            let exports = EngineImageExports()
            defer { exports.removeAll() }
            // A directory is checked where it is; any other image (a disk, an archive, an erofs...)
            // is opened and, when needed, extracted into a scratch directory removed afterwards.
            let opened = try await ImageOpener.open(try await exports.resolve(rootfs, option: "ROOTFS"), option: "ROOTFS")
            defer { opened.close() }
            var isDirectory = false
            if case .directory = opened.source { isDirectory = FS.isDirectory(rootfs) }
            let tree = try opened.directory()
            guard json else {
                if isDirectory {
                    try RootfsChecker.requireTree(at: rootfs, agentInit: agentInit)
                } else {
                    let problems = RootfsChecker(tree: GuestTree(root: tree)).problems(agentInit: agentInit)
                    guard problems.isEmpty else {
                        throw RootfsError("\(rootfs) (\(opened.what)) is not a bootable rootfs",
                                          hint: "build it with `rootfs build DISTRO\(agentInit ? " --agent-init" : "")`, which installs init and agent",
                                          details: problems)
                    }
                }
                print("\(rootfs): ok (init and agent present\(agentInit ? ", agent is init" : "")\(isDirectory ? "" : "; " + opened.what))")
                return
            }
            let problems = RootfsChecker(tree: GuestTree(root: tree)).problems(agentInit: agentInit)
            let inventory = try await PackageInventory.read(tree: tree)
            try printJSON(Report(rootfs: rootfs, ok: problems.isEmpty, agentInit: agentInit, problems: problems,
                                 packageDatabase: inventory.database.rawValue, packages: inventory.packages.count))
            if !problems.isEmpty { throw ExitCode.failure }
        }
    }
}
