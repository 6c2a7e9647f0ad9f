import ArgumentParser
import RootfsKit

@main
struct Rootfs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rootfs",
        abstract: "Build minimal Linux guest root filesystems and boot images.",
        version: RootfsVersion.version,
        subcommands: [ListCommand.self, BuildCommand.self, InitrdCommand.self, ImageCommand.self, ExtendCommand.self,
                      CheckCommand.self, BootCommand.self, NewCommand.self, DiffCommand.self]
    )
}
