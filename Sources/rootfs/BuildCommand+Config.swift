import ArgumentParser
import Foundation
import RootfsKit
import Synchronization

/// `rootfs build -C FILE` and `rootfs build --from-manifest M`: the file becomes arguments put
/// before the command line's own, and the command is parsed again from both, so every key
/// goes through its flag's own parsing and checks and a flag given wins over the file
/// (which wins over the environment, which wins over the defaults).
extension BuildCommand {
    /// Where a build's config comes from.
    struct ConfigSource: Sendable {
        var option: String
        var path: String
        var config: RootfsConfig
    }

    /// The config named by -C or --from-manifest, or ./rootfs.toml when no distro is named.
    func configSource() throws -> ConfigSource? {
        if let fromManifest {
            return ConfigSource(option: "--from-manifest", path: FS.absolute(fromManifest),
                                config: try ConfigFile.fromManifest(fromManifest))
        }
        if let configFile {
            return ConfigSource(option: "-C", path: FS.absolute(configFile), config: try ConfigFile.load(configFile))
        }
        if distro == nil && fromImage == nil && FS.isRegularFile(ConfigFile.defaultName) {
            return ConfigSource(option: "-C", path: FS.absolute(ConfigFile.defaultName),
                                config: try ConfigFile.load(ConfigFile.defaultName))
        }
        return nil
    }

    /// The arguments of the command with its config applied: the config's first, then
    /// `commandLine` (this command's own, as typed), then the marker that the config is in.
    func argumentsWithConfig(_ source: ConfigSource, commandLine: [String]) throws -> [String] {
        if distro == nil && fromImage == nil && source.config.distro?.name == nil && source.config.distro?.fromImage == nil {
            throw RootfsError("\(source.path) names no distro", hint: "set name under [distro], or name the distro on the command line")
        }
        let pairs = source.config.buildArguments()
        let name = distro == nil ? source.config.distro?.name.map { [$0] } ?? [] : []
        var arguments = name + pairs.flatMap(\.arguments) + commandLine
        if configFile == nil && fromManifest == nil { arguments += [source.option, source.path] }
        arguments.append("--config-applied")
        do {
            _ = try BuildCommand.parse(arguments)
        } catch {
            // Name the key when it is the file's value that its flag refuses.
            for (key, args) in pairs {
                do { _ = try BuildCommand.parse(["config-check"] + args) } catch let refused {
                    throw RootfsError("\(source.path): key '\(key)': \(BuildCommand.message(for: refused))",
                                      hint: "fix the value in the file, or override it with its flag")
                }
            }
            throw error
        }
        return arguments
    }

    /// The resolved options in rootfs.toml's shape, from the parsed flags (the config file's
    /// values are among them); the planner adds what only it knows (RootfsConfig.resolved).
    func flagsConfig(boot: RootfsConfig.Boot?) -> RootfsConfig {
        func absolute(_ p: String?) -> String? { p.map(FS.absolute) }
        func reference(_ p: String) -> String {
            (try? ImageReference.parse(p)) != nil || p.contains("://") ? p : FS.absolute(p)
        }
        let env = ProcessInfo.processInfo.environment
        var c = RootfsConfig()
        var d = RootfsConfig.Distro()
        d.name = distro
        d.version = osVersion
        d.architecture = arch
        d.packages = extraPackages
        d.fromImage = fromImage.map(reference)
        d.distrosDirs = global.distrosDirs.map(FS.absolute)
        c.distro = d
        var content = RootfsConfig.Content()
        content.agent = absolute(agent)
        content.agentInit = agentInit
        content.kata = kata
        content.rootfsOnly = rootfsOnly
        content.overlays = compose.overlays.map(reference)
        content.files = compose.files.map { spec in
            guard let eq = spec.firstIndex(of: "=") else { return spec }
            return String(spec[..<eq]) + "=" + FS.absolute(String(spec[spec.index(after: eq)...]))
        }
        c.content = content
        var output = RootfsConfig.Output()
        output.directory = absolute(outputDirectory)
        output.formats = formats
        output.rootfsDir = absolute(rootfsDir ?? env["ROOTFS_DIR"].flatMap { $0.isEmpty ? nil : $0 })
        output.initrd = absolute(initrd)
        output.image = absolute(image)
        output.compression = compression.rawValue
        output.force = force
        output.manifest = !noManifest
        output.sbom = sbom
        c.output = output
        let f = imageFlags
        var i = RootfsConfig.Image()
        i.freeSpace = f.freeSpace
        i.partitionTable = f.partitionTable.rawValue
        i.noPartitionTable = f.noPartitionTable
        i.fs = f.filesystem.rawValue
        i.erofsCompression = f.erofsCompression.rawValue
        i.blockSize = f.blockSize
        i.ext4Writer = f.ext4Writer.rawValue
        i.dax = f.dax
        i.skipDaxHeader = f.skipDaxHeader
        i.align = f.align
        i.vhdxFixed = f.vhdxFixed
        i.verity = f.verity
        i.variant = f.variant
        i.kernel = absolute(f.kernel)
        i.cmdline = f.cmdline
        c.image = i
        var b = RootfsConfig.Build()
        b.engine = engineChoice?.rawValue
        b.builderBase = builderBase
        b.cacheDir = absolute(cacheDir)
        b.noCache = noCache
        c.build = b
        c.boot = boot
        return c
    }

    /// Runs the command again with its config applied (nil: there is none, or it is applied).
    /// A failure to read the file is reported as any other (`error: ...`, `--json`).
    /// `commandLine`: the words the config's arguments go before (default: this process's, after `build`).
    func withConfig(commandLine: [String]? = nil) async throws -> BuildCommand? {
        guard !configApplied else { return nil }
        let box = Mutex<[String]?>(nil)
        let me = CommandLineCopy(self)
        try await CommandRunner.run(json: json) {
            guard let source = try me.command.configSource() else { return }
            if let epoch = source.config.build?.sourceDateEpoch {
                // The file's SOURCE_DATE_EPOCH wins over the environment's, as its other keys do.
                guard epoch >= 0 else {
                    throw RootfsError("\(source.path): key 'build.source-date-epoch' must be 0 or more, not \(epoch)")
                }
                setenv("SOURCE_DATE_EPOCH", String(epoch), 1)
            }
            let arguments = try me.command.argumentsWithConfig(source, commandLine: commandLine ?? Self.commandLine(of: "build"))
            box.withLock { $0 = arguments }
        }
        guard let arguments = box.withLock({ $0 }) else { return nil }
        return try BuildCommand.parse(arguments)
    }

    /// The words after `subcommand` on this process's command line.
    static func commandLine(of subcommand: String) -> [String] {
        let all = Array(CommandLine.arguments.dropFirst())
        guard let index = all.firstIndex(of: subcommand) else { return all }
        return Array(all[(index + 1)...])
    }

    /// The [boot] settings of the config this command names (they have no build flag).
    func configBoot() -> RootfsConfig.Boot? {
        (try? configSource())??.config.boot
    }
}

/// A parsed command carried into CommandRunner's Sendable closure (read only there).
struct CommandLineCopy<C: ParsableArguments>: @unchecked Sendable {
    var command: C
    init(_ command: C) { self.command = command }
}

/// `rootfs build <TAB>`, `rootfs new --from <TAB>`: the distros `rootfs list` shows, with the
/// command line's --distros-dir directories searched first.
@Sendable func distroNameCompletions(_ words: [String], _ index: Int, _ prefix: String) -> [String] {
    var dirs: [String] = []
    for (i, word) in words.enumerated() {
        if word == "--distros-dir", i + 1 < words.count { dirs.append(words[i + 1]) }
        else if word.hasPrefix("--distros-dir=") { dirs.append(String(word.dropFirst("--distros-dir=".count))) }
    }
    return DistroCatalog.standard(distrosDirs: dirs).entries().map(\.distro.name).filter { $0.hasPrefix(prefix) }
}
