import ArgumentParser
import Foundation
import RootfsKit

struct BuilderCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "builder", abstract: "Manage the builder container images of container builds (--docker, --podman).",
        subcommands: [BuilderSeedCommand.self])
}

struct BuilderSeedCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "seed",
        abstract: "Make a distro's base image (e.g. debian:trixie) locally from a rootfs built on this host.",
        discussion: """
        Builds the distro's minimal rootfs on this host (PACKAGES empty, plus any --package), writes it \
        as a tar and imports it with `docker import` / `podman import` as OS_NAME:OS_VERSION, the image \
        the FROM line of the distro's Dockerfile.in names. For hosts that reach a package mirror but \
        no container registry. Engine: --engine, else USE_DOCKER / USE_PODMAN, else the first that answers.
        """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The distro whose base image to make (see `rootfs list`).") var distro: String
    @Option(help: ArgumentHelp("The engine to import into.", valueName: ContainerEngine.Kind.valueNames)) var engine: ContainerEngine.Kind?
    @Option(name: .customLong("os-version"), help: "The distro release (overrides OS_VERSION).") var osVersion: String?
    @Option(help: ArgumentHelp("The image reference (default: OS_NAME:OS_VERSION).", valueName: "IMAGE")) var tag: String?
    @Option(name: .customLong("package"), help: ArgumentHelp("Install this package too (repeatable).", valueName: "PKG"))
    var packages: [String] = []
    @Flag(name: .customLong("if-missing"), help: "Do nothing when the image is already there.") var ifMissing = false
    @Option(name: .customLong("build-dir"), help: ArgumentHelp("Scratch and log directory (default: build/<distro>).", valueName: "DIR"))
    var buildDir: String?

    func run() async throws {
        let console = global.makeConsole()
        let (distro, engineChoice, osVersion, tag, packages, ifMissing, buildDir, dirs) =
            (distro, engine, osVersion, tag, packages, ifMissing, buildDir, global.distrosDirs)
        try await CommandRunner.run {
            let env = ProcessInfo.processInfo.environment
            let kind: ContainerEngine.Kind
            switch engineChoice.map({ $0 == .docker ? EngineChoice.docker : .podman }) ?? EngineChoice.fromEnvironment(env) {
            case .docker: kind = .docker
            case .podman: kind = .podman
            default:
                guard let found = await ContainerEngine.firstAnswering(environment: env) else {
                    throw RootfsError("no container engine answers (neither docker nor podman)",
                                      hint: "install docker.io or podman; start Docker with `systemctl start docker` or scripts/start-docker.sh")
                }
                kind = found.kind
            }
            var options = BaseImageSeeder.Options(distro: distro, engine: kind, environment: env)
            options.distrosDirs = dirs
            options.osVersion = osVersion
            options.tag = tag
            options.packages = packages
            options.ifMissing = ifMissing
            options.buildDirectory = buildDir
            let started = Date()
            let result = try await BaseImageSeeder(console: console).seed(options)
            if result.skipped {
                console.result("\(kind.rawValue) image: \(result.tag)  \(result.imageID) (already present)")
            } else {
                console.result("\(kind.rawValue) image: \(result.tag)  \(result.imageID)")
                console.info(String(format: "seeded from a %@ rootfs tar in %.1f s", formatBytes(result.tarBytes),
                                    Date().timeIntervalSince(started)))
            }
        }
    }
}
