import Foundation

/// Everything that decides the hook's output tree, in one place: the tree cache's key
/// is the digest of these, and a miss names the inputs that differ from the last build
/// of the same distro, release and architecture. A new input (a new build option that
/// changes what build_rootfs makes) is one more field here.
public struct TreeCacheInputs: Codable, Sendable, Equatable {
    /// Bumped when the entries' layout or the key's encoding changes.
    public var version = 1
    public var distro: String
    /// SHA-256 over the distro directory's files: names, modes and contents, in sorted order.
    public var distroFiles: String
    /// config.sh as evaluated (every variable it set).
    public var config: [String: String]
    public var packages: [String]
    public var extraPackages: [String]
    public var architecture: String
    /// host, or the engine and the builder image (its tag and the digest of its inputs).
    public var engine: String
    /// The repository's state: for Debian the digest of the suite's InRelease/Release
    /// (a mirror update changes it), "unknown" when it cannot be read.
    public var repository: String
    /// SOURCE_DATE_EPOCH: the bootstrap tool clamps the tree's times to it.
    public var epoch: Int?

    public init(distro: String, distroFiles: String, config: [String: String], packages: [String],
                extraPackages: [String], architecture: String, engine: String, repository: String, epoch: Int?) {
        self.distro = distro
        self.distroFiles = distroFiles
        self.config = config
        self.packages = packages
        self.extraPackages = extraPackages
        self.architecture = architecture
        self.engine = engine
        self.repository = repository
        self.epoch = epoch
    }

    /// The canonical encoding (sorted keys, no blanks) the key is the digest of.
    public var canonicalJSON: [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array((try? encoder.encode(self)) ?? Data())
    }

    /// The cache key: SHA-256 of the canonical encoding, hex.
    public var key: String { SHA256.hexDigest(of: canonicalJSON) }

    /// The names of the inputs that differ from `previous`, in a fixed order
    /// (`config: OS_VERSION` names the variable).
    public func changes(from previous: TreeCacheInputs) -> [String] {
        var out: [String] = []
        if version != previous.version { out.append("cache format") }
        if distro != previous.distro { out.append("distro") }
        if distroFiles != previous.distroFiles { out.append("distro directory files") }
        let names = Set(config.keys).union(previous.config.keys).sorted()
        out += names.filter { config[$0] != previous.config[$0] }.map { "config: \($0)" }
        if packages != previous.packages { out.append("packages") }
        if extraPackages != previous.extraPackages { out.append("extra packages") }
        if architecture != previous.architecture { out.append("architecture") }
        if engine != previous.engine { out.append("engine") }
        if repository != previous.repository { out.append("repository state") }
        if epoch != previous.epoch { out.append("SOURCE_DATE_EPOCH") }
        return out
    }

    /// SHA-256 over the regular files and links below `directory` (and `extra` files outside
    /// it, such as a rootfs_lib.sh kept apart): relative names, modes, contents or link targets.
    public static func digestFiles(in directory: String, extra: [String] = []) throws -> String {
        var hasher = SHA256()
        func add(_ path: String, name: String) throws {
            var st = stat()
            guard lstat(path, &st) == 0 else { return }
            hasher.update(Array(name.utf8) + [0] + Array(String(st.st_mode, radix: 8).utf8) + [0])
            if st.st_mode & S_IFMT == S_IFREG {
                hasher.update(Array(try SHA256.hexDigest(ofFile: path).utf8))
            } else if st.st_mode & S_IFMT == S_IFLNK {
                hasher.update(Array(((try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? "").utf8))
            }
            hasher.update([0x0a])
        }
        let names = (FileManager.default.subpaths(atPath: directory) ?? [])
            .sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        for name in names { try add(directory + "/" + name, name: name) }
        for path in extra where !path.hasPrefix(directory + "/") { try add(path, name: path) }
        return SHA256.hex(hasher.finalize())
    }
}
