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
