import Foundation

/// What the user asked `rootfs build` for.
public struct BuildOptions: Sendable {
    public var distro: String
    public var distrosDirs: [String] = []
    public var rootfsDir: String?
    public var initrd: String?
    public var image: String?
    public var osVersion: String?
    public var extraPackages: [String] = []
    public var agentPath: String?
    public var agentInit = false
    /// `--arch` (Kata's uname -m names); nil: ARCH, else the host's.
    public var architecture: String?
    /// `--kata` (true); nil: the Kata guest profile is on whenever the agent is Kata's (KataProfile.swift).
    public var kata: Bool?
    /// `--rootfs-only` (or ROOTFS_ONLY=yes): the distro tree, no agent, no init, no checks.
    public var rootfsOnly = false
    public var force = false
    /// `--force-any-directory`: `--force` for a directory that holds no rootfs build record.
    public var forceAnyDirectory = false
    /// Free space in disk images' file systems (`--free-space`; the same as `imageOptions.freeSpaceMiB`).
    public var freeSpaceMiB: Int {
        get { imageOptions.freeSpaceMiB }
        set { imageOptions.freeSpaceMiB = newValue }
    }
    public var compression: Compression = .zstd
    public var buildDirectory: String?
    /// Plan only (`--dry-run`): what would stop a build (a missing agent or
    /// host tool, a refused hook setting) is collected in `BuildPlan.problems`
    /// instead of thrown, and nothing is written.
    public var dryRun = false
    /// `--format` (repeatable): when given, these outputs replace the default rootfs + initrd + raw image.
    public var formats: [OutputFormat] = []
    /// `-O/--output-dir DIR`: where the outputs the build names itself go, DIR/<name>.<ext> (default: the build directory).
    public var outputDirectory: String?
    /// `-o/--output FILE`: the one `--format` output, written to FILE (its format from its extension without --format).
    public var output: String?
    /// `--overlay` / `--file`, applied in order after the hook and the agent, before the writers.
    public var overlays: [OverlaySpec] = []
    /// Options of the format writers (partition table, file system, kernel, ...).
    public var imageOptions = ImageOptions()
    /// Kata's DAX header on disk images: `--dax` (true), `--skip-dax-header` (false); nil: Kata's
    /// default, on under the Kata profile (unless SKIP_DAX_HEADER=yes) for MBR disks, off otherwise.
    public var daxHeader: Bool?
    /// Write `<name>.manifest.json` next to the outputs (and `<name>.spdx.json` with `sbom`).
    public var manifest = true
    public var sbom = false
    /// Where the hook runs (nil: USE_DOCKER / USE_PODMAN, else the host).
    public var engine: EngineChoice?
    /// The builder image's FROM (--builder-base; nil: BUILDER_BASE, IMAGE_REGISTRY, Dockerfile.in).
    public var builderBase: String?
    /// How the tree travels from the hook to the writers (default: directory as root, tar otherwise).
    public var transport: TreeTransport = .current
    /// `--from-image`: the tree is this image (`oci:DIR[:TAG]` or `docker-archive:FILE`; the CLI saves
    /// `docker://` and `podman://` images to an archive first) instead of the distro's hook output.
    public var fromImage: String?
    /// What the user wrote for `--from-image` (for messages and the build record).
    public var fromImageLabel: String?
    /// `--cache-dir DIR` (nil: ROOTFS_CACHE_DIR, else the default; see CacheDirectory).
    public var cacheDirectory: String?
    /// `--no-cache`: neither use nor fill the tree cache. `--refresh`: rebuild and replace the entry.
    public var noCache = false
    public var refresh = false
    /// `--lock FILE`: write every installed package with its exact version there (PackageLock).
    public var lockPath: String?
    /// `--locked FILE`: install exactly the versions of that lock file.
    public var lockedPath: String?
    public var environment: [String: String]
    /// The build's options in rootfs.toml's shape, as the CLI resolved them (flags over the
    /// config file); the planner completes it and the manifest records it (nil: none recorded).
    public var recordedConfig: RootfsConfig?

    public init(distro: String, environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.distro = distro
        self.environment = environment
    }
}

/// Package names are passed to package managers as single arguments, never
/// through a shell; anything that could be read as an option or shell syntax is refused.
public enum PackageName {
    public static func isValid(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, first != "-" else { return false }
        return name.unicodeScalars.allSatisfy { c in
            (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || "._+-:=~/@".unicodeScalars.contains(c)
        }
    }

    public static func validate(_ names: [String], option: String) throws {
        if let bad = names.first(where: { !isValid($0) }) {
            throw RootfsError("invalid package name in \(option): '\(bad)'",
                              hint: "package names are letters, digits and . _ + - : = ~ / @, and do not start with '-'")
        }
    }
}

/// Settings that reach command lines and rendered files (mmdebstrap's suite and
/// mirror arguments, dnf.conf, apt.conf, the builder's Dockerfile). A value starting
/// with '-' would become an option (`--customize-hook=` runs host commands), a
/// newline or any other control character would add a line to a rendered file.
public enum SettingValue {
    /// C0 controls, DEL and C1 controls (U+0080-U+009F).
    public static func hasControlCharacter(_ value: String) -> Bool {
        value.unicodeScalars.contains { $0.value < 0x20 || (0x7F ... 0x9F).contains($0.value) }
    }

    /// OS_VERSION: letters, digits and . _ + - ~ :, not starting with '-' (`bookworm`, `3.23`, `9-stream`).
    public static func validateVersion(_ value: String, source: String) throws {
        guard value.isEmpty || (!value.hasPrefix("-") && value.unicodeScalars.allSatisfy { c in
            (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || "._+-~:".unicodeScalars.contains(c)
        }) else {
            throw RootfsError("invalid OS_VERSION in \(source): '\(printable(value))'",
                              hint: "a version is letters, digits and . _ + - ~ : (bookworm, 3.23, 10), and does not start with '-'")
        }
    }

    /// A URL-like word (REPO_URL, METALINK, GPG_KEY_URL, MIRROR, a proxy): no leading '-',
    /// no blank, no control character, no double quote (apt.conf quotes the proxy).
    public static func validateWord(_ value: String, name: String, source: String) throws {
        guard value.isEmpty || (!value.hasPrefix("-") && !hasControlCharacter(value)
                                && !value.unicodeScalars.contains { $0 == " " || $0 == "\"" || $0.properties.isWhitespace }) else {
            throw RootfsError("invalid \(name) in \(source): '\(printable(value))'",
                              hint: "\(name) is one word (a URL): no blank, quote or control character (newline, tab...), and it does not start with '-'")
        }
    }

    /// The value with its control characters shown as \u{..}, for an error message.
    static func printable(_ value: String) -> String {
        String(value.unicodeScalars.map { hasControlCharacter(String($0)) ? "\\u{\(String($0.value, radix: 16))}" : String($0) }.joined())
    }

    /// The environment's proxy settings, passed into builder containers and rendered
    /// into dnf's and apt's configuration.
    public static let proxyNames = ["http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"]
    public static let urlNames = ["REPO_URL", "METALINK", "GPG_KEY_URL", "MIRROR"]

    public static func validateProxies(_ environment: [String: String]) throws {
        for name in proxyNames { if let value = environment[name] { try validateWord(value, name: name, source: "the environment") } }
    }
}
