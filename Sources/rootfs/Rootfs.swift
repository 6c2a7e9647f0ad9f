import ArgumentParser
import RootfsKit

@main
struct Rootfs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rootfs",
        abstract: "Build minimal Linux guest root filesystems and boot images.",
        discussion: "Shell completions: rootfs --generate-completion-script bash|zsh|fish (docs/CLI.md).",
        subcommands: [ListCommand.self, BuildCommand.self, InitrdCommand.self, ImageCommand.self, ExtendCommand.self,
                      CheckCommand.self, BootCommand.self, NewCommand.self, SizeCommand.self, BuilderCommand.self,
                      DiffCommand.self, VerityCommand.self, CacheCommand.self, SummaryCommand.self, VerifyCommand.self]
    )

    @Flag(help: "Print the version and the commit rootfs was built from.")
    var version = false

    func run() async throws {
        guard version else { throw CleanExit.helpRequest(self) }
        // The checkout's commit, or the one scripts/install.sh recorded for an installed copy.
        print("rootfs \(RootfsVersion.version) (commit \(await ProjectData.buildCommit().commit))")
    }
}
