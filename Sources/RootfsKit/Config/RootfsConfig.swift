import Foundation

/// `rootfs.toml`: a build written down (docs/CLI.md, "Config files"). The same shape is
/// recorded, fully resolved, in every manifest (`config`), so `rootfs build --from-manifest M`
/// replays a build from it. Every key is optional: a missing one leaves the flag's default.
/// Keys are the long flag names of `rootfs build`, grouped as mkosi groups its settings.
public struct RootfsConfig: Sendable, Codable, Equatable {
    public struct Distro: Sendable, Codable, Equatable {
        /// `rootfs build NAME`.
        public var name: String?
        /// `--os-version`.
        public var version: String?
        /// `--arch`.
        public var architecture: String?
        /// `--extra-pkg` (each), on top of the distro's PACKAGES.
        public var packages: [String]?
        /// `--from-image`.
        public var fromImage: String?
        /// `--distros-dir` (each).
        public var distrosDirs: [String]?

        enum CodingKeys: String, CodingKey, CaseIterable {
            case name, version, architecture, packages
            case fromImage = "from-image", distrosDirs = "distros-dirs"
        }
        public init() {}
    }

    public struct Content: Sendable, Codable, Equatable {
        public var agent: String?
        public var agentInit: Bool?
        public var kata: Bool?
        public var rootfsOnly: Bool?
        /// `--overlay` (each, in order).
        public var overlays: [String]?
        /// `--file GUEST=HOST` (each, in order).
        public var files: [String]?

        enum CodingKeys: String, CodingKey, CaseIterable {
            case agent, kata, overlays, files
            case agentInit = "agent-init", rootfsOnly = "rootfs-only"
        }
        public init() {}
    }

    public struct Output: Sendable, Codable, Equatable {
        /// The directory of the `--format` outputs (`-o DIR` today).
        public var directory: String?
        /// `--format` (each).
        public var formats: [String]?
        public var rootfsDir: String?
        public var initrd: String?
        public var image: String?
        public var compression: String?
        public var force: Bool?
        public var manifest: Bool?
        public var sbom: Bool?

        enum CodingKeys: String, CodingKey, CaseIterable {
            case directory, formats, initrd, image, compression, force, manifest, sbom
            case rootfsDir = "rootfs-dir"
        }
        public init() {}
    }

    /// The format writers' options (ImageFlags).
    public struct Image: Sendable, Codable, Equatable {
        public var freeSpace: Int?
        public var partitionTable: String?
        public var noPartitionTable: Bool?
        public var fs: String?
        public var erofsCompression: String?
        public var blockSize: Int?
        public var ext4Writer: String?
        public var dax: Bool?
        public var skipDaxHeader: Bool?
        public var align: Int?
        public var vhdxFixed: Bool?
        public var verity: Bool?
        public var variant: String?
        public var kernel: String?
        public var cmdline: String?

        enum CodingKeys: String, CodingKey, CaseIterable {
            case fs, dax, align, verity, variant, kernel, cmdline
            case freeSpace = "free-space", partitionTable = "partition-table", noPartitionTable = "no-partition-table"
            case erofsCompression = "erofs-compression", blockSize = "block-size", ext4Writer = "ext4-writer"
            case skipDaxHeader = "skip-dax-header", vhdxFixed = "vhdx-fixed"
        }
        public init() {}
    }

    /// Where and how the hook runs.
    public struct Build: Sendable, Codable, Equatable {
        public var engine: String?
        public var builderBase: String?
        public var cacheDir: String?
        public var noCache: Bool?
        /// SOURCE_DATE_EPOCH for the build (the file wins over the environment).
        public var sourceDateEpoch: Int?

        enum CodingKeys: String, CodingKey, CaseIterable {
            case engine
            case builderBase = "builder-base", cacheDir = "cache-dir", noCache = "no-cache"
            case sourceDateEpoch = "source-date-epoch"
        }
        public init() {}
    }

    /// How `rootfs boot` starts what was built (kept with the build; shown by `rootfs summary`).
    public struct Boot: Sendable, Codable, Equatable {
        public var kernel: String?
        public var memory: Int?
        public var cpus: Int?
        public var timeout: Int?
        public var append: String?
        public var firmware: String?

        enum CodingKeys: String, CodingKey, CaseIterable {
            case kernel, memory, cpus, timeout, append, firmware
        }
        public init() {}
    }

    public var distro: Distro?
    public var content: Content?
    public var output: Output?
    public var image: Image?
    public var build: Build?
    public var boot: Boot?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case distro, content, output, image, build, boot
    }

    public init() {}

    /// What a key holds, for the message about a value of the wrong type.
    static func expectedType(of key: String) -> String {
        let numbers: Set = ["image.free-space", "image.block-size", "image.align", "build.source-date-epoch",
                            "boot.memory", "boot.cpus", "boot.timeout"]
        let lists: Set = ["distro.packages", "distro.distros-dirs", "content.overlays", "content.files", "output.formats"]
        let flags: Set = ["content.agent-init", "content.kata", "content.rootfs-only", "output.force", "output.manifest",
                          "output.sbom", "image.no-partition-table", "image.dax", "image.skip-dax-header", "image.vhdx-fixed",
                          "image.verity", "build.no-cache"]
        if numbers.contains(key) { return "a whole number" }
        if lists.contains(key) { return "an array of strings" }
        if flags.contains(key) { return "true or false" }
        return CodingKeys(rawValue: key) != nil ? "a table ([\(key)])" : "a string"
    }

    /// The keys a section holds (for the message about an unknown one).
    static func knownKeys(section: String?) -> [String] {
        switch section {
        case nil: CodingKeys.allCases.map(\.rawValue)
        case "distro": Distro.CodingKeys.allCases.map(\.rawValue)
        case "content": Content.CodingKeys.allCases.map(\.rawValue)
        case "output": Output.CodingKeys.allCases.map(\.rawValue)
        case "image": Image.CodingKeys.allCases.map(\.rawValue)
        case "build": Build.CodingKeys.allCases.map(\.rawValue)
        case "boot": Boot.CodingKeys.allCases.map(\.rawValue)
        default: []
        }
    }
}
