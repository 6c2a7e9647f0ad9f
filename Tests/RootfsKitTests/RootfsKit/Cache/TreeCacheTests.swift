import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// The tree cache's key: each input changes it, and a miss names the input.
@Suite struct TreeCacheKeyTests {
    func inputs(distroFiles: String = "d", config: [String: String] = ["OS_VERSION": "trixie"], architecture: String = "x86_64",
                repository: String = "InRelease sha256:1") -> TreeCacheInputs {
        TreeCacheInputs(distro: "debian", distroFiles: distroFiles, config: config, packages: ["systemd"], extraPackages: [],
                        architecture: architecture, engine: "host", repository: repository, epoch: 1)
    }

    @Test func everyInputChangesTheKeyAndIsNamed() throws {
        let base = inputs()
        let cases: [(TreeCacheInputs, String)] = [
            (inputs(distroFiles: "e"), "distro directory files"),
            (inputs(config: ["OS_VERSION": "bookworm"]), "config: OS_VERSION"),
            (inputs(architecture: "aarch64"), "architecture"),
            (inputs(repository: "InRelease sha256:2"), "repository state"),
        ]
        for (changed, name) in cases {
            #expect(changed.key != base.key, "\(name)")
            #expect(changed.changes(from: base) == [name])
        }
        #expect(inputs().key == base.key)
        #expect(base.changes(from: inputs()).isEmpty)
    }

    @Test func distroFilesAndTheRepositorysReleaseFileAreRead() async throws {
        let dir = try Fixtures.temporaryDirectory("treekey"); defer { FS.remove(dir) }
        try FS.makeDirectories(dir + "/distro")
        try "OS_NAME=debian\n".write(toFile: dir + "/distro/config.sh", atomically: true, encoding: .utf8)
        let first = try TreeCacheInputs.digestFiles(in: dir + "/distro")
        try "OS_NAME=debian\n# changed\n".write(toFile: dir + "/distro/config.sh", atomically: true, encoding: .utf8)
        #expect(try TreeCacheInputs.digestFiles(in: dir + "/distro") != first)

        try FS.makeDirectories(dir + "/repo/dists/suite")
        try "Suite: suite\nDate: 1\n".write(toFile: dir + "/repo/dists/suite/Release", atomically: true, encoding: .utf8)
        let runner = ProcessRunner()
        let a = await RepositoryState.read(osName: "debian", osVersion: "suite", repoURL: "file://" + dir + "/repo", runner: runner)
        #expect(a.hasPrefix("Release sha256:"))
        try "Suite: suite\nDate: 2\n".write(toFile: dir + "/repo/dists/suite/Release", atomically: true, encoding: .utf8)
        let b = await RepositoryState.read(osName: "debian", osVersion: "suite", repoURL: dir + "/repo/", runner: runner)
        #expect(b.hasPrefix("Release sha256:") && a != b)
        #expect(await RepositoryState.read(osName: "debian", osVersion: "../x", repoURL: dir, runner: runner).hasPrefix("unknown"))
        #expect(await RepositoryState.read(osName: "debian", osVersion: "suite", repoURL: nil, runner: runner).hasPrefix("unknown"))
    }

    /// `rootfs cache prune` while a build reads an entry (a shared lock on its record): the entry is kept.
    @Test func pruneKeepsAnEntryBeingRead() throws {
        let dir = try Fixtures.temporaryDirectory("treeprune"); defer { FS.remove(dir) }
        try FS.makeDirectories(dir + "/tree/etc")
        try "x\n".write(toFile: dir + "/tree/etc/file", atomically: true, encoding: .utf8)
        let cache = TreeCache(cache: CacheDirectory(root: dir + "/cache"))
        let key = inputs()
        try cache.store(key, tree: dir + "/tree")
        #expect(cache.lookup(key).hit)
        let fd = open(cache.recordPath(key.key), O_RDONLY)
        #expect(flock(fd, LOCK_SH) == 0)
        #expect(cache.prune(olderThan: nil).isEmpty)
        #expect(cache.lookup(key).hit)
        close(fd)
        #expect(cache.prune(olderThan: nil) == [key.key])
        #expect(!cache.lookup(key).hit)
        #expect(cache.restore(key, to: dir + "/restored") != nil, "a pruned entry is not restored")
    }

    @Test func durations() throws {
        #expect(try CacheCommandDuration.parse("30d") == 30 * 86400)
        #expect(try CacheCommandDuration.parse("90") == 90)
        #expect(throws: RootfsError.self) { try CacheCommandDuration.parse("1x") }
        #expect(throws: RootfsError.self) { try CacheCommandDuration.parse("99999999999999999w") }
    }
}

/// The tree cache through the CLI, on a busybox guest that calls itself Debian and reads a local
/// repository (file://) whose Release file the test rewrites.
@Suite(.serialized, .requires(.root, .busybox), .tags(.root, .busybox)) struct TreeCacheCLITests {
    static let config = """
    OS_NAME=debian
    OS_VERSION=cachesuite
    INIT_PROCESS=agent
    PACKAGES=""
    HOST_TOOLS="busybox"
    """

    struct Build { var result: String; var why: [String]; var stderr: String; var tar: String }

    func build(_ distros: String, cache: String, out: String, repo: String, extra: [String] = []) async throws -> Build {
        let r = try await Fixtures.rootfs(["build", "deb", "--distros-dir", distros, "--cache-dir", cache, "--format", "tar",
                                           "-O", out, "--no-manifest", "--json"] + extra,
                                          environment: ["SOURCE_DATE_EPOCH": "1700000000", "REPO_URL": "file://" + repo])
        #expect(r.status == 0, "\(r.stderr.suffix(2000))")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let tree = try #require(json["treeCache"] as? [String: Any], "\(r.stdout)")
        return Build(result: tree["result"] as? String ?? "", why: tree["why"] as? [String] ?? [], stderr: r.stderr,
                     tar: try SHA256.hexDigest(ofFile: out + "/deb.tar"))
    }

    @Test func missHitRepositoryChangeCorruptEntryAndPrune() async throws {
        let distros = try TestDistros.make(["deb": (Self.config, TestDistros.busyboxLib)])
        let dir = try Fixtures.temporaryDirectory("treecache")
        defer { FS.remove(dir); FS.remove(distros) }
        let repo = dir + "/repo", cache = dir + "/cache"
        try FS.makeDirectories(repo + "/dists/cachesuite")
        try "Suite: cachesuite\nDate: one\n".write(toFile: repo + "/dists/cachesuite/Release", atomically: true, encoding: .utf8)

        let cold = try await build(distros, cache: cache, out: dir + "/1", repo: repo)
        #expect(cold.result == "miss")
        #expect(cold.stderr.contains("populating"), "the hook ran")
        let warm = try await build(distros, cache: cache, out: dir + "/2", repo: repo)
        #expect(warm.result == "hit")
        #expect(!warm.stderr.contains("populating"), "the hook was skipped")
        #expect(warm.stderr.contains("build_rootfs skipped"))
        #expect(warm.tar == cold.tar, "a hit gives the cold build's bytes")

        // A mirror update: the Release file changes, the key with it.
        try "Suite: cachesuite\nDate: two\n".write(toFile: repo + "/dists/cachesuite/Release", atomically: true, encoding: .utf8)
        let updated = try await build(distros, cache: cache, out: dir + "/3", repo: repo)
        #expect(updated.result == "miss" && updated.why == ["repository state"], "\(updated.why)")
        #expect(updated.tar == cold.tar)

        // A truncated entry is found out, thrown away and rebuilt, never used.
        let entries = try FileManager.default.contentsOfDirectory(atPath: cache + "/trees").filter { $0.hasSuffix(".tar.zst") }
        #expect(entries.count == 2)
        for name in entries { #expect(truncate(cache + "/trees/" + name, 100) == 0) }
        let corrupt = try await build(distros, cache: cache, out: dir + "/4", repo: repo)
        #expect(corrupt.result == "miss" && corrupt.why.joined().contains("corrupt"), "\(corrupt.why)")
        #expect(corrupt.stderr.contains("populating"))
        #expect(corrupt.tar == cold.tar)
        // The same size but other bytes: the SHA-256 check on use finds it, the hook runs.
        // (The other Release file's entry is still the truncated one: only a lookup of its key discards it.)
        let current = try FileManager.default.contentsOfDirectory(atPath: cache + "/trees")
            .filter { $0.hasSuffix(".tar.zst") && FS.fileSize(cache + "/trees/" + $0) > 1000 }
        #expect(current.count == 1)
        let handle = try #require(FileHandle(forUpdatingAtPath: cache + "/trees/" + current[0]))
        try handle.seek(toOffset: 200)
        let byte = try #require(try handle.read(upToCount: 1))
        try handle.seek(toOffset: 200)
        try handle.write(contentsOf: Data([byte[0] ^ 0xff]))
        try handle.close()
        let flipped = try await build(distros, cache: cache, out: dir + "/5a", repo: repo)
        #expect(flipped.result == "miss" && flipped.why.joined().contains("SHA-256"), "\(flipped.why)")
        #expect(flipped.stderr.contains("populating"))
        #expect(flipped.tar == cold.tar)
        let again = try await build(distros, cache: cache, out: dir + "/5", repo: repo)
        #expect(again.result == "hit")
        let off = try await build(distros, cache: cache, out: dir + "/6", repo: repo, extra: ["--no-cache"])
        #expect(off.result == "off" && off.stderr.contains("populating"))

        let list = try await Fixtures.rootfs(["cache", "list", "--cache-dir", cache])
        #expect(list.status == 0)
        #expect(list.stdout.contains("tree ") && list.stdout.contains("deb cachesuite"), "\(list.stdout)")
        #expect(try await Fixtures.rootfs(["cache", "path", "--cache-dir", cache]).stdout == cache + "\n")
        let kept = try await Fixtures.rootfs(["cache", "prune", "--older-than", "1d", "--cache-dir", cache])
        #expect(kept.stdout.contains("nothing to remove"), "\(kept.stdout)")
        let pruned = try await Fixtures.rootfs(["cache", "prune", "--cache-dir", cache])
        #expect(pruned.stdout.contains("removed tree"), "\(pruned.stdout)")
        let empty = try await Fixtures.rootfs(["cache", "list", "--cache-dir", cache])
        #expect(!empty.stdout.contains("tree "), "\(empty.stdout)")
    }
}

/// Builds sharing one cache at the same time, prune during a read, and an unusable cache
/// directory, through the CLI on a busybox guest (no REPO_URL: its repository state is unknown).
@Suite(.serialized, .requires(.root, .busybox), .tags(.root, .busybox)) struct TreeCacheConcurrencyCLITests {
    /// The hook sleeps, so that a second build starts while the first one is filling the entry.
    static let slowLib = TestDistros.busyboxLib.replacingOccurrences(of: "    local root=$1\n", with: "    local root=$1\n    sleep 3\n")

    /// A `rootfs build` left running: its output goes to files, so that nothing in this
    /// process has to read pipes while the two builds run.
    final class Running {
        let process = Process()
        let log: String
        init(_ arguments: [String], log: String) throws {
            self.log = log
            FileManager.default.createFile(atPath: log + ".out", contents: nil)
            FileManager.default.createFile(atPath: log + ".err", contents: nil)
            process.executableURL = URL(fileURLWithPath: Fixtures.rootfsBinary)
            process.arguments = arguments
            var env = ProcessInfo.processInfo.environment
            env["SOURCE_DATE_EPOCH"] = "1700000000"
            env["REPO_URL"] = nil
            process.environment = env
            process.standardInput = FileHandle.nullDevice
            process.standardOutput = FileHandle(forWritingAtPath: log + ".out")
            process.standardError = FileHandle(forWritingAtPath: log + ".err")
            try process.run()
        }
        func finish() throws -> (status: Int32, stdout: String, stderr: String) {
            process.waitUntilExit()
            return (process.terminationStatus, try String(contentsOfFile: log + ".out", encoding: .utf8),
                    try String(contentsOfFile: log + ".err", encoding: .utf8))
        }
    }

    func treeCache(_ stdout: String) throws -> (result: String, why: [String]) {
        let json = try #require(try JSONSerialization.jsonObject(with: Data(stdout.utf8)) as? [String: Any], "\(stdout)")
        let tree = try #require(json["treeCache"] as? [String: Any], "\(stdout)")
        return (tree["result"] as? String ?? "", tree["why"] as? [String] ?? [])
    }

    func args(_ distros: String, cache: String, out: String) -> [String] {
        ["build", "slow", "--distros-dir", distros, "--cache-dir", cache, "--format", "tar", "-O", out, "--no-manifest", "--json"]
    }

    /// Two builds with one key at once: the second waits for the first (said in its output), then
    /// uses the entry the first stored; the hook runs once and both outputs are the same bytes.
    @Test func twoBuildsFillingOneKeyOneWaitsForTheOther() async throws {
        let distros = try TestDistros.make(["slow": (TestDistros.busyboxConfig, Self.slowLib)])
        let dir = try Fixtures.temporaryDirectory("treefill")
        defer { FS.remove(dir); FS.remove(distros) }
        let cache = dir + "/cache"
        let first = try Running(args(distros, cache: cache, out: dir + "/a"), log: dir + "/a")
        // The first build holds the entry's fill lock while its hook sleeps: start the second then.
        var locked = false
        for _ in 0..<600 where !locked {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: cache + "/trees")) ?? []
            locked = names.contains { $0.hasSuffix(".tar.zst.lock") }
            if !locked { usleep(100_000) }
        }
        #expect(locked, "the first build took no fill lock")
        let second = try Running(args(distros, cache: cache, out: dir + "/b"), log: dir + "/b")
        let a = try first.finish(), b = try second.finish()
        #expect(a.status == 0, "\(a.stderr.suffix(2000))")
        #expect(b.status == 0, "\(b.stderr.suffix(2000))")
        #expect(try treeCache(a.stdout).result == "miss")
        let waited = try treeCache(b.stdout)
        #expect(waited.result == "hit" && waited.why == ["filled by another build while this one waited"], "\(waited)")
        #expect(b.stderr.contains("waiting for another build filling "), "\(b.stderr.suffix(2000))")
        #expect(a.stderr.contains("populating") && !b.stderr.contains("populating"), "the hook ran once")
        // No REPO_URL: the state is unknown, and a hit says what that means.
        #expect(b.stderr.contains("the repository's state is unknown"), "\(b.stderr.suffix(2000))")
        #expect(try SHA256.hexDigest(ofFile: dir + "/a/slow.tar") == SHA256.hexDigest(ofFile: dir + "/b/slow.tar"))
        // The lock went away with its holder; no temporary file is left as an entry.
        let left = try FileManager.default.contentsOfDirectory(atPath: cache + "/trees")
        #expect(left.filter { $0.hasPrefix(".") }.isEmpty, "\(left)")
        #expect(left.filter { $0.hasSuffix(".tar.zst") }.count == 1)
    }

    /// `rootfs cache prune` while a build reads the entry (holds the shared lock on its record):
    /// the entry is kept and said so; once the reader let go, prune removes it.
    @Test func pruneKeepsTheEntryABuildIsReading() async throws {
        let distros = try TestDistros.make(["slow": (TestDistros.busyboxConfig, TestDistros.busyboxLib)])
        let dir = try Fixtures.temporaryDirectory("treeprune-cli")
        defer { FS.remove(dir); FS.remove(distros) }
        let cache = dir + "/cache"
        let filled = try Running(args(distros, cache: cache, out: dir + "/a"), log: dir + "/a").finish()
        #expect(filled.status == 0, "\(filled.stderr.suffix(2000))")
        let records = try FileManager.default.contentsOfDirectory(atPath: cache + "/trees")
            .filter { $0.hasSuffix(".json") && !$0.hasPrefix("last-") }
        #expect(records.count == 1)
        // What TreeCache.restore holds while it checks and extracts an entry.
        let fd = open(cache + "/trees/" + records[0], O_RDONLY | O_CLOEXEC)
        #expect(fd >= 0 && flock(fd, LOCK_SH) == 0)
        let kept = try await Fixtures.rootfs(["cache", "prune", "--cache-dir", cache])
        #expect(kept.status == 0 && kept.stdout.contains("kept tree ") && kept.stdout.contains("a build is reading it"), "\(kept.stdout)")
        #expect(!kept.stdout.contains("removed tree"))
        // A second reader shares the lock: the build is still a hit with the first build's bytes.
        let reader = try Running(args(distros, cache: cache, out: dir + "/b"), log: dir + "/b").finish()
        #expect(reader.status == 0, "\(reader.stderr.suffix(2000))")
        #expect(try treeCache(reader.stdout).result == "hit")
        #expect(try SHA256.hexDigest(ofFile: dir + "/a/slow.tar") == SHA256.hexDigest(ofFile: dir + "/b/slow.tar"))
        close(fd)
        let pruned = try await Fixtures.rootfs(["cache", "prune", "--cache-dir", cache])
        #expect(pruned.stdout.contains("removed tree ") && !pruned.stdout.contains("kept tree"), "\(pruned.stdout)")
        #expect(!FS.exists(cache + "/trees/" + records[0]))
    }

    /// An unwritable cache directory (a read-only bind mount, even for root; a file where the
    /// directory should be): a warning, and the build goes on without any cache, with the same bytes.
    @Test func anUnwritableCacheDirectoryIsAWarningAndTheBuildGoesOn() async throws {
        let distros = try TestDistros.make(["slow": (TestDistros.busyboxConfig, TestDistros.busyboxLib)])
        let dir = try Fixtures.temporaryDirectory("treero")
        defer { FS.remove(dir); FS.remove(distros) }
        let usable = try Running(args(distros, cache: dir + "/cache", out: dir + "/ok"), log: dir + "/ok").finish()
        #expect(usable.status == 0, "\(usable.stderr.suffix(2000))")

        try FS.makeDirectories(dir + "/ro")
        let runner = ProcessRunner()
        try await runner.capture(ToolCommand("mount", ["--bind", dir + "/ro", dir + "/ro"]))
        defer { _ = Fixtures.status("/bin/umount", [dir + "/ro"]) }
        try await runner.capture(ToolCommand("mount", ["-o", "remount,ro,bind", dir + "/ro"]))
        try "not a directory\n".write(toFile: dir + "/file", atomically: true, encoding: .utf8)
        // A root build runs programs from cached trees: a cache another user could write is refused too.
        try FS.makeDirectories(dir + "/shared")
        chmod(dir + "/shared", 0o777)
        try FS.makeDirectories(dir + "/foreign")
        chown(dir + "/foreign", 1234, 1234)
        let refusals = ["shared": "\(dir)/shared is writable by others (mode 777)", "foreign": "\(dir)/foreign belongs to uid 1234, not root"]
        for (name, cache) in [("readonly", dir + "/ro/cache"), ("file", dir + "/file"),
                              ("shared", dir + "/shared/cache"), ("foreign", dir + "/foreign")] {
            let r = try Running(args(distros, cache: cache, out: dir + "/out-" + name), log: dir + "/out-" + name).finish()
            #expect(r.status == 0, "\(name): \(r.stderr.suffix(2000))")
            #expect(r.stderr.contains("warning: the tree cache is not used"), "\(name): \(r.stderr.suffix(2000))")
            #expect(r.stderr.contains("warning: the package cache is not used"), "\(name)")
            let outcome = try treeCache(r.stdout)
            #expect(outcome.result == "off" && outcome.why.joined().contains("cannot be used"), "\(name): \(outcome)")
            if let refusal = refusals[name] { #expect(r.stderr.contains(refusal), "\(name): \(r.stderr.suffix(2000))") }
            #expect(r.stderr.contains("populating"), "\(name): the hook ran")
            #expect(try SHA256.hexDigest(ofFile: dir + "/out-\(name)/slow.tar") == SHA256.hexDigest(ofFile: dir + "/ok/slow.tar"), "\(name)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/ro").isEmpty)
        // Refused before anything was made in them.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/shared").isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/foreign").isEmpty)
        // Sticky and root's own are fine: a cache in /tmp (1777) or under a 0755 root directory.
        try FS.makeDirectories(dir + "/sticky/cache")
        chmod(dir + "/sticky", 0o1777)
        #expect(CacheDirectory.writableByOthers(dir + "/sticky/cache") == nil)
        #expect(CacheDirectory.writableByOthers(dir + "/ok") == nil)
    }
}
