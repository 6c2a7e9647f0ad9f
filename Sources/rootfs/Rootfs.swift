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
                      DiffCommand.self, VerityCommand.self, CacheCommand.self]
    )

    /// ArgumentParser's own messages (a bad flag, a failed validate()) start with this, as rootfs's
    /// own errors do (CommandRunner): one prefix, `error:`, instead of ArgumentParser's `Error:`.
    static var _errorPrefix: String { "error: " }

    @Flag(help: "Print the version and the commit rootfs was built from.")
    var version = false

    func run() async throws {
        guard version else { throw CleanExit.helpRequest(self) }
        print(await RootfsVersion.describe())
    }
}
