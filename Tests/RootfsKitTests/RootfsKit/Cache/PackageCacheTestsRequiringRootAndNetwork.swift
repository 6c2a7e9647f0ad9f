import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// The package cache shared by builds, on real Debian builds (mmdebstrap from Debian's mirror).
@Suite(.serialized, .requires(.root, .network), .tags(.root, .network)) struct PackageCacheTestsRequiringRootAndNetwork {
    /// Cold cache, warm cache, and an unusable cache (a warning, the build goes on without it):
    /// the same tar bytes each time, and the cache is filled by the first build.
    @Test func coldWarmAndNoCacheGiveTheSameBytes() async throws {
        let dir = try Fixtures.temporaryDirectory("pkgcache")
        defer { FS.remove(dir) }
        let env = ["SOURCE_DATE_EPOCH": "1700000000"]
        // --no-cache: the tree cache would skip the hook, and with it the package cache.
        let args = ["build", "debian", "--agent-init", "--format", "tar", "--no-manifest", "--no-cache"]
        let cache = dir + "/cache"
        let cold = try await Fixtures.rootfs(args + ["-O", dir + "/cold", "--cache-dir", cache], environment: env)
        #expect(cold.status == 0, "\(cold.stderr.suffix(3000))")
        let archives = try #require(try FileManager.default.subpathsOfDirectory(atPath: cache + "/packages"))
        let debs = archives.filter { $0.hasSuffix(".deb") }
        #expect(debs.count > 50, "the cold build left its .debs in the cache: \(archives.prefix(10))")
        #expect(archives.contains { $0.hasSuffix("_InRelease") }, "and apt's lists")

        let warm = try await Fixtures.rootfs(args + ["-O", dir + "/warm"], environment: env.merging(["ROOTFS_CACHE_DIR": cache]) { $1 })
        #expect(warm.status == 0, "\(warm.stderr.suffix(3000))")
        // No cache: the directory cannot be made (below a regular file), even for root.
        try "not a directory\n".write(toFile: dir + "/file", atomically: true, encoding: .utf8)
        let none = try await Fixtures.rootfs(args + ["-O", dir + "/none", "--cache-dir", dir + "/file/cache"], environment: env)
        #expect(none.status == 0, "\(none.stderr.suffix(3000))")
        #expect(none.stderr.contains("warning: the package cache is not used"), "\(none.stderr.suffix(2000))")

        let digests = try ["cold", "warm", "none"].map { try SHA256.hexDigest(ofFile: dir + "/\($0)/debian.tar") }
        #expect(digests[0] == digests[1], "cold and warm cache")
        #expect(digests[0] == digests[2], "cache and no cache")
        // Nothing of the cache is in the guest.
        let paths = try ArchiveReader.list(dir + "/warm/debian.tar").map(\.path)
        #expect(!paths.contains { $0.hasSuffix(".deb") })
        #expect(!paths.contains { $0.contains("var/lib/apt/lists/") && $0.hasSuffix("_InRelease") })
    }

    private func treeCacheResult(_ json: String) throws -> String? {
        let doc = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        return (doc?["treeCache"] as? [String: Any])?["result"] as? String
    }

    /// The tree cache on a real Debian tree: the warm build skips the hook and writes the cold
    /// build's bytes (owners, modes and times survive the cached tar).
    @Test func warmDebianBuildSkipsTheHookAndGivesTheSameBytes() async throws {
        let dir = try Fixtures.temporaryDirectory("treecache-debian")
        defer { FS.remove(dir) }
        let env = ["SOURCE_DATE_EPOCH": "1700000000", "ROOTFS_CACHE_DIR": dir + "/cache"]
        let args = ["build", "debian", "--agent-init", "--format", "tar", "--format", "raw", "--no-manifest", "--json"]
        let cold = try await Fixtures.rootfs(args + ["-O", dir + "/cold"], environment: env)
        #expect(cold.status == 0, "\(cold.stderr.suffix(3000))")
        #expect(try treeCacheResult(cold.stdout) == "miss", "\(cold.stdout.suffix(600))")
        let warm = try await Fixtures.rootfs(args + ["-O", dir + "/warm"], environment: env)
        #expect(warm.status == 0, "\(warm.stderr.suffix(3000))")
        #expect(try treeCacheResult(warm.stdout) == "hit", "\(warm.stdout.suffix(600))")
        #expect(warm.stderr.contains("build_rootfs skipped") && !warm.stderr.contains("mmdebstrap"), "\(warm.stderr.suffix(2000))")
        for file in ["debian.tar", "debian.img"] {
            #expect(try SHA256.hexDigest(ofFile: dir + "/cold/" + file) == SHA256.hexDigest(ofFile: dir + "/warm/" + file), "\(file)")
        }
    }

    /// The tree cache for a rootless build (mmdebstrap --mode=unshare as an ordinary user): the
    /// entry keeps the hook tar's owners, and a hit gives them back, so the warm build writes the
    /// cold build's bytes (root:shadow on /etc/shadow, setuid root on passwd, device nodes).
    @Test func rootlessWarmBuildIsAHitWithTheColdBuildsOwnersAndBytes() async throws {
        try await RootlessUser.ensure()
        let dir = try Fixtures.temporaryDirectory("treecache-rootless")
        defer { FS.remove(dir) }
        let staged = try await RootlessUser.stage(in: dir)
        let env = ["SOURCE_DATE_EPOCH": "1700000000", "ROOTFS_CACHE_DIR": staged.run + "/cache"]
        let args = [staged.binary, "build", "debian", "--distros-dir", staged.distros, "--agent-init",
                    "--format", "tar", "--format", "raw", "--no-manifest", "--json"]
        let cold = try await RootlessUser.run(args + ["-O", staged.run + "/cold"], in: staged.run, environment: env)
        #expect(cold.status == 0, "\(cold.stderr.suffix(3000))")
        #expect(try treeCacheResult(cold.stdout) == "miss", "\(cold.stdout.suffix(600))")
        let warm = try await RootlessUser.run(args + ["-O", staged.run + "/warm"], in: staged.run, environment: env)
        #expect(warm.status == 0, "\(warm.stderr.suffix(3000))")
        #expect(try treeCacheResult(warm.stdout) == "hit", "\(warm.stdout.suffix(600))")
        #expect(warm.stderr.contains("build_rootfs skipped") && !warm.stderr.contains("mmdebstrap"), "\(warm.stderr.suffix(2000))")
        let entries = ArchiveReader.list
        let shadow = try entries(staged.run + "/warm/debian.tar").first { $0.path == "etc/shadow" || $0.path == "./etc/shadow" }
        #expect(shadow.map { "\($0.uid):\($0.gid)" } == "0:42", "the cached tree kept the hook's owners")
        for file in ["debian.tar", "debian.img"] {
            let same = try SHA256.hexDigest(ofFile: staged.run + "/cold/" + file) == SHA256.hexDigest(ofFile: staged.run + "/warm/" + file)
            var why = ""
            if !same && file == "debian.tar" {
                why = (try await Fixtures.rootfs(["diff", staged.run + "/cold/" + file, staged.run + "/warm/" + file])).stdout
            }
            #expect(same, "\(file): \(why.prefix(3000))")
        }
    }
}

@Suite struct CacheDirectoryTests {
    @Test func resolvesFlagThenVariableThenDefaults() {
        #expect(CacheDirectory.resolve(option: "/a", environment: ["ROOTFS_CACHE_DIR": "/b"]).root == "/a")
        #expect(CacheDirectory.resolve(option: nil, environment: ["ROOTFS_CACHE_DIR": "/b"]).root == "/b")
        #expect(CacheDirectory.resolve(option: nil, environment: ["XDG_CACHE_HOME": "/x"], isRoot: false).root == "/x/rootfs")
        #expect(CacheDirectory.resolve(option: nil, environment: ["HOME": "/home/u"], isRoot: false).root == "/home/u/.cache/rootfs")
        #expect(CacheDirectory.resolve(option: nil, environment: ["XDG_CACHE_HOME": "/x"], isRoot: true).root == "/var/cache/rootfs")
    }

    @Test func configValuesNeverMakeAPath() {
        let cache = CacheDirectory(root: "/c")
        #expect(cache.packageDirectory(osName: "debian", osVersion: "../../etc", architecture: "x86_64") == "/c/packages/debian-.._.._etc-x86_64")
        #expect(cache.packageDirectory(osName: "..", osVersion: "", architecture: "a b") == "/c/packages/_-default-a_b")
    }

    @Test func anUnusableDirectoryIsNamedNotThrown() throws {
        let dir = try Fixtures.temporaryDirectory("cachedir"); defer { FS.remove(dir) }
        try "x\n".write(toFile: dir + "/file", atomically: true, encoding: .utf8)
        #expect(CacheDirectory.prepare(dir + "/file/x") != nil)
        #expect(CacheDirectory.prepare(dir + "/with blank") != nil)
        #expect(CacheDirectory.prepare(dir + "/a/b") == nil)
        #expect(FS.isDirectory(dir + "/a/b"))
    }
}
