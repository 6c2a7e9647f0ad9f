import ArgumentParser
import Foundation
import RootfsKit

struct NewCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "new",
        abstract: "Create a new distro directory from template/ (or from an existing distro).",
        discussion: """
        Writes <dir>/<name>/ with config.sh, rootfs_lib.sh (a build_rootfs() stub to implement) and \
        Dockerfile.in. <dir> is the first --distros-dir, else the working directory. \
        An existing directory is never overwritten.
        """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The new distro's name: lower-case letters, digits, '-' and '_'.") var name: String
    @Option(help: ArgumentHelp("Copy this existing distro instead of the template.", valueName: "DISTRO"),
            completion: .custom(distroNameCompletions))
    var from: String?
    @Option(name: .customLong("os-version"), help: "The OS_VERSION default written into config.sh (template only; default: latest).")
    var osVersion: String?

    func validate() throws {
        if from != nil && osVersion != nil {
            throw ValidationError("--os-version fills in the template; with --from, edit OS_VERSION in the copied config.sh instead")
        }
    }

    func run() async throws {
        let (name, from, osVersion, dirs) = (name, from, osVersion, global.distrosDirs)
        let console = global.makeConsole()
        try await CommandRunner.run {
            let scaffold = try Scaffold.plan(name: name, from: from, osVersion: osVersion ?? "latest", distrosDirs: dirs)
            let files = try scaffold.create()
            console.result("created \(scaffold.destination) (\(files.joined(separator: ", ")))")
            let dirOption = " --distros-dir \(shellQuote(dirs.first ?? "."))"
            if case .template = scaffold.source {
                console.info("next: implement build_rootfs() in \(scaffold.destination)/rootfs_lib.sh, set PACKAGES and HOST_TOOLS in config.sh, then `rootfs build \(name)\(dirOption)`")
            } else {
                console.info("next: adapt the copied files, then `rootfs build \(name)\(dirOption)`")
            }
        }
    }
}
