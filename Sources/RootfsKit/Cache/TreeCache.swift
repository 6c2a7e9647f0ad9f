import Foundation
import Synchronization

/// The tree cache: the finished hook output of a build, kept as a zstd tar (owners kept)
/// under the key of its `TreeCacheInputs`, so that a build with the same inputs skips the hook.
///
///     DIR/trees/<key>.tar.zst   the tree
///     DIR/trees/<key>.json      its inputs, size and SHA-256 (written last: an entry without it is not one)
///     DIR/trees/last-<distro>-<version>-<arch>.json   the inputs of the last build, to say why a miss missed
///
/// Entries are written under temporary names and renamed, so readers never see half of one.
/// A reader holds a shared lock on the .json while it extracts; `prune` skips locked entries.
/// A build filling an entry holds `.KEY.tar.zst.lock` (an OutputLock) from before its hook runs
/// until the entry is stored: a second build with the same key waits, then finds the entry.
public struct TreeCache: Sendable {
    public var directory: String

    public init(cache: CacheDirectory) { directory = cache.root + "/trees" }

    /// What an entry's .json holds.
    public struct Record: Codable, Sendable {
        public var key: String
        public var inputs: TreeCacheInputs
        public var bytes: Int64
        public var sha256: String
        public var created: Int
    }

    public func tarPath(_ key: String) -> String { directory + "/" + key + ".tar.zst" }
    public func recordPath(_ key: String) -> String { directory + "/" + key + ".json" }
    func lastPath(_ inputs: TreeCacheInputs) -> String {
        directory + "/last-" + [inputs.distro, inputs.config["OS_VERSION"] ?? "", inputs.architecture]
            .map(CacheDirectory.safeName).joined(separator: "-") + ".json"
    }

    /// Whether an entry for `inputs` is there (size checked; the digest is checked on use),
    /// and if not, which inputs changed since the last build of the same distro, release and architecture.
    public func lookup(_ inputs: TreeCacheInputs) -> (hit: Bool, why: [String]) {
        let key = inputs.key
        if FS.exists(recordPath(key)) {
            if let record = read(recordPath(key)), record.key == key, FS.fileSize(tarPath(key)) == record.bytes {
                return (true, [])
            }
            // Truncated, or a record that does not parse: never used.
            discard(key)
            return (false, ["the entry \(key.prefix(16)) was corrupt (its size differs from its record): discarded"])
        }
        guard let last = read(lastPath(inputs), as: TreeCacheInputs.self) else { return (false, ["no earlier build with this cache"]) }
        let changes = inputs.changes(from: last)
        return (false, changes.isEmpty ? ["the entry is gone (pruned or discarded)"] : changes)
    }

    /// Extracts the entry for `inputs` into `destination` (which must not exist) after checking its
    /// digest. A corrupt entry (truncated, another digest, unreadable) is removed and nil returned with why.
    /// `extract` unpacks the checked tar into `destination` (a rootless build keeps the owners aside);
    /// nil: extracted as this process can (owners kept as root).
    public func restore(_ inputs: TreeCacheInputs, to destination: String, extract: ((String) throws -> Void)? = nil) -> String? {
        let key = inputs.key
        let record = recordPath(key), tar = tarPath(key)
        let fd = open(record, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "the entry \(key.prefix(16)) is gone" }
        defer { close(fd) }
        flock(fd, LOCK_SH)
        guard let entry = read(record), entry.key == key else { discard(key); return "its record was unreadable: discarded" }
        guard FS.fileSize(tar) == entry.bytes, (try? SHA256.hexDigest(ofFile: tar)) == entry.sha256 else {
            discard(key)
            return "the entry \(key.prefix(16)) was corrupt (size or SHA-256 differ from its record): discarded"
        }
        do {
            if let extract { try extract(tar) } else { try TreeExtractor(destination: destination).extract(.archive(tar)) }
        } catch {
            FS.remove(destination)
            discard(key)
            return "the entry \(key.prefix(16)) could not be extracted (\(error)): discarded"
        }
        // Last use, for `rootfs cache list` and `prune --older-than`.
        utimes(record, nil)
        return nil
    }

    /// Stores `tree` as the entry of `inputs`: tar and record under temporary names, renamed (tar first).
    /// `transform` gives each item its true owner and mode (a rootless build's tree: RootlessTree.restore).
    public func store(_ inputs: TreeCacheInputs, tree: String, transform: ((inout TreeItem) throws -> Void)? = nil) throws {
        try FS.makeDirectories(directory)
        let key = inputs.key
        let tar = tarPath(key)
        var archiver = TreeArchiver(format: .paxRestricted, compression: .zstd, level: nil, epoch: nil)
        archiver.transform = transform
        _ = try archiver.write(source: .directory(tree), to: tar)
        let record = Record(key: key, inputs: inputs, bytes: FS.fileSize(tar), sha256: try SHA256.hexDigest(ofFile: tar),
                            created: Int(Date().timeIntervalSince1970))
        try write(record, to: recordPath(key))
        try write(inputs, to: lastPath(inputs))
    }

    /// Takes the lock of a build filling `key`'s entry, waiting while another build holds it
    /// (`waiting` is told once, with the holder's pid). Nil when no lock file can be made there:
    /// the build goes on unlocked (its store fails and warns the same way).
    public func lockForFilling(_ key: String, waiting: (String) -> Void) async throws -> OutputLock? {
        try? FS.makeDirectories(directory)
        let lockPath = OutputLock.lockPath(for: tarPath(key))
        var told = false, unmade = 0
        while true {
            if let lock = OutputLock.attempt(output: tarPath(key)) { return lock }
            // A lock file OutputLock refuses (a hard link, a special file) is never waited for.
            var st = stat()
            if lstat(lockPath, &st) == 0, (st.st_mode & S_IFMT) != S_IFREG || st.st_nlink > 1 { return nil }
            if let holder = FileManager.default.contents(atPath: lockPath) {
                unmade = 0
                if !told {
                    let pid = String(decoding: holder.prefix(20), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                    // Only digits reach the output: the file is the cache's, not ours to trust.
                    waiting(!pid.isEmpty && pid.allSatisfy { $0.isASCII && $0.isNumber } ? pid : "?")
                    told = true
                }
            } else {
                // Not held (the holder may just have let go), yet not lockable: a few tries, then unlocked.
                unmade += 1
                if unmade > 3 { return nil }
            }
            try await Task.sleep(nanoseconds: 200_000_000)
        }
    }

    /// Remembers the inputs of a build that did not store its tree (for the next miss's reasons).
    public func remember(_ inputs: TreeCacheInputs) {
        try? FS.makeDirectories(directory)
        try? write(inputs, to: lastPath(inputs))
    }

    public func discard(_ key: String) {
        unlink(recordPath(key))
        unlink(tarPath(key))
    }

    /// Every entry: key, distro, size, creation and last use.
    public struct Listed: Codable, Sendable {
        public var key: String
        public var distro: String
        public var osVersion: String
        public var architecture: String
        public var bytes: Int64
        public var created: Int
        public var lastUsed: Int
    }

    /// Every entry's record that reads, in the order of their keys (what `list` and an incremental
    /// build's search for a base read).
    public func records() -> [(path: String, record: Record)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasSuffix(".json") && !$0.hasPrefix("last-") && !$0.hasPrefix(".") }.sorted().compactMap { name in
            let path = directory + "/" + name
            return read(path).map { (path, $0) }
        }
    }

    public func list() -> [Listed] {
        records().map { path, record in
            var st = stat()
            let used = stat(path, &st) == 0 ? Int(st.st_mtim.tv_sec) : record.created
            return Listed(key: record.key, distro: record.inputs.distro, osVersion: record.inputs.config["OS_VERSION"] ?? "",
                          architecture: record.inputs.architecture, bytes: record.bytes, created: record.created, lastUsed: used)
        }
    }

    /// Removes entries last used more than `olderThan` seconds ago (all with nil), except those a
    /// build is reading (their record is locked; `kept` is told their keys). Returns the removed keys.
    public func prune(olderThan: Int?, now: Int = Int(Date().timeIntervalSince1970), kept: (String) -> Void = { _ in }) -> [String] {
        var removed: [String] = []
        for entry in list() where olderThan.map({ now - entry.lastUsed > $0 }) ?? true {
            let fd = open(recordPath(entry.key), O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            guard flock(fd, LOCK_EX | LOCK_NB) == 0 else { kept(entry.key); continue }
            discard(entry.key)
            removed.append(entry.key)
        }
        return removed
    }

    private func read(_ path: String) -> Record? { read(path, as: Record.self) }

    private func read<T: Decodable>(_ path: String, as type: T.Type) -> T? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONDecoder().decode(T.self, from: data)
    }

    private func write<T: Encodable>(_ value: T, to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        let temporary = FS.siblingTemporaryPath(for: path)
        try encoder.encode(value).write(to: URL(fileURLWithPath: temporary))
        try FS.rename(temporary, to: path)
    }
}

/// The tree cache's outcome for one build (plan: lookup; hook stage: what really happened).
public final class TreeCacheOutcome: Sendable {
    public struct State: Sendable, Codable, Equatable {
        /// hit, miss, off (--no-cache, --from-image, an unusable cache directory), refresh
        public var result: String
        public var key: String
        /// Why a miss missed: the inputs that changed, or what was wrong with the entry.
        public var why: [String]
        /// result "incremental": the entry the tree starts from, and the packages extend_rootfs adds.
        public var base: String? = nil
        public var adding: [String]? = nil
    }
    private let state: Mutex<State>
    public init(_ state: State) { self.state = Mutex(state) }
    public var value: State { state.withLock { $0 } }
    public func set(_ new: State) { state.withLock { $0 = new } }
}

/// `rootfs cache prune --older-than D`: `30d`, `12h`, `45m`, `90s`, `1w` or plain seconds, checked.
public enum CacheCommandDuration {
    public static func parse(_ text: String) throws -> Int {
        let units: [Character: Int] = ["s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800]
        var digits = Substring(text)
        var unit = 1
        if let last = text.last, let u = units[last] { unit = u; digits = digits.dropLast() }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else {
            throw RootfsError("--older-than \(text) is not a duration", hint: "give a number with s, m, h, d or w, for example 30d")
        }
        guard let value = Int(digits) else {
            throw RootfsError("--older-than \(text) is too large", hint: "give a shorter duration, for example 365d")
        }
        let (product, overflow) = value.multipliedReportingOverflow(by: unit)
        guard !overflow else { throw RootfsError("--older-than \(text) is too large", hint: "give a shorter duration, for example 365d") }
        return product
    }
}
