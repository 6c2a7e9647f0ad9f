import ArgumentParser
import Foundation
import RootfsKit

@main
struct Rootfs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rootfs",
        abstract: "Build minimal Linux guest root filesystems and boot images.",
        discussion: "Shell completions: rootfs --generate-completion-script bash|zsh|fish (docs/CLI.md).",
        subcommands: [ListCommand.self, BuildCommand.self, InitrdCommand.self, ImageCommand.self, ExtendCommand.self,
                      CheckCommand.self, BootCommand.self, NewCommand.self, SizeCommand.self, BuilderCommand.self,
                      DiffCommand.self, VerityCommand.self, CacheCommand.self,
                      LsCommand.self, CpCommand.self, SummaryCommand.self, VerifyCommand.self]
    )

    /// ArgumentParser's own messages (a bad flag, a failed validate()) start with this, as rootfs's
    /// own errors do (CommandRunner): one prefix, `error:`, instead of ArgumentParser's `Error:`.
    static var _errorPrefix: String { "error: " }

    @Flag(help: "Print the version and the commit rootfs was built from.")
    var version = false

    /// ArgumentParser's own main, except that `rootfs boot`'s usage errors exit 125: boot passes
    /// its guest's exit status through, so all of rootfs's own failures share 125 (`docker run`'s).
    static func main() async {
        var command: any ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            // Parsing and validate(): an unknown flag, a bad value (help and --version exit 0 as ever).
            if exitCode(for: error) != .success, CommandLine.arguments.dropFirst().first == "boot" {
                FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
                Foundation.exit(QEMUBoot.failureExitStatus)
            }
            exit(withError: error)
        }
        do {
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }

    func run() async throws {
        guard version else { throw CleanExit.helpRequest(self) }
        // The checkout's commit, or the one scripts/install.sh recorded for an installed copy.
        print("rootfs \(RootfsVersion.version) (commit \(await ProjectData.buildCommit().commit))")
    }
}
