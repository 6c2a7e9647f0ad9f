import ArgumentParser
import Foundation
import RootfsKit

struct CheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check", abstract: "Check that a rootfs directory has an init and an agent; write nothing.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The rootfs directory.") var rootfs: String
    @Flag(name: .customLong("agent-init"), help: "Require the agent to be /sbin/init.") var agentInit = false

    func run() async throws {
        let (rootfs, agentInit) = (rootfs, agentInit)
        try await CommandRunner.run {
            try requireTree(rootfs, agentInit: agentInit)
            print("\(rootfs): ok (init and agent present\(agentInit ? ", agent is init" : ""))")
        }
    }
}
