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
    /// `--kata` (true); nil: the Kata guest profile is on whenever the agent is Kata's (KataProfile.swift).
    public var kata: Bool?
    /// `--rootfs-only` (or ROOTFS_ONLY=yes): the distro tree, no agent, no init, no checks.
    public var rootfsOnly = false
    public var force = false
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
    /// `-o DIR` for the formats (default: the build directory).
    public var outputDirectory: String?
    /// `--overlay` / `--file`, applied in order after the hook and the agent, before the writers.
    public var overlays: [OverlaySpec] = []
    /// Options of the format writers (partition table, file system, kernel, ...).
    public var imageOptions = ImageOptions()
    /// Write `<name>.manifest.json` next to the outputs (and `<name>.spdx.json` with `sbom`).
    public var manifest = true
    public var sbom = false
    /// Where the hook runs (nil: USE_DOCKER / USE_PODMAN, else the host).
    public var engine: EngineChoice?
    /// The builder image's FROM (--builder-base; nil: BUILDER_BASE, IMAGE_REGISTRY, Dockerfile.in).
    public var builderBase: String?
    /// How the tree travels from the hook to the writers (default: directory as root, tar otherwise).
    public var transport: TreeTransport = .current
    /// `--cache-dir DIR` (nil: ROOTFS_CACHE_DIR, else the default; see CacheDirectory).
    public var cacheDirectory: String?
    /// `--no-cache`: neither use nor fill the tree cache. `--refresh`: rebuild and replace the entry.
    public var noCache = false
    public var refresh = false
    public var environment: [String: String]

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
