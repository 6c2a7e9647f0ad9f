import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// Incremental extra packages and lock files on real Debian builds (mmdebstrap from Debian's mirror).
@Suite(.serialized, .requires(.root, .network), .tags(.root, .network)) struct IncrementalDebianTestsRequiringRootAndNetwork {
    struct Build { var status: Int32; var json: [String: Any]; var stderr: String; var dir: String }

    func build(_ dir: String, _ flags: [String], env: [String: String]) async throws -> Build {
        let r = try await Fixtures.rootfs(["build", "debian", "--agent-init", "--format", "tar", "--json", "-O", dir] + flags, environment: env)
        let json = (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
        return Build(status: r.status, json: json, stderr: r.stderr, dir: dir)
    }

    func tree(_ b: Build) -> [String: Any] { b.json["treeCache"] as? [String: Any] ?? [:] }

    /// name=version of every package in a build's manifest.
    func packages(_ dir: String) throws -> Set<String> {
        let data = try #require(FileManager.default.contents(atPath: dir + "/debian.manifest.json"))
        let doc = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let list = try #require(doc["packages"] as? [[String: Any]])
        return Set(list.map { "\($0["name"] as? String ?? "")=\($0["version"] as? String ?? "")" })
    }

    func names(_ set: Set<String>) -> Set<String> { Set(set.map { String($0.prefix { $0 != "=" }) }) }

    /// Cold, warm (the hook skipped, the same bytes) and warm with one extra package (extend_rootfs
    /// only); then the incremental tree against a cold build with the same extra: the same packages,
    /// and `rootfs diff` finds only what docs/CACHE.md explains.
    @Test func coldWarmAndIncrementalBuilds() async throws {
        let dir = try Fixtures.temporaryDirectory("incremental-debian")
        defer { FS.remove(dir) }
        let env = ["SOURCE_DATE_EPOCH": "1700000000", "ROOTFS_CACHE_DIR": dir + "/cache"]
        let cold = try await build(dir + "/cold", [], env: env)
        #expect(cold.status == 0, "\(cold.stderr.suffix(3000))")
        #expect(tree(cold)["result"] as? String == "miss")
        let warm = try await build(dir + "/warm", [], env: env)
        #expect(warm.status == 0, "\(warm.stderr.suffix(3000))")
        #expect(tree(warm)["result"] as? String == "hit" && warm.stderr.contains("build_rootfs skipped"), "\(warm.stderr.prefix(600))")
        #expect(try SHA256.hexDigest(ofFile: cold.dir + "/debian.tar") == SHA256.hexDigest(ofFile: warm.dir + "/debian.tar"))

        let inc = try await build(dir + "/inc", ["--extra-pkg", "hello"], env: env)
        #expect(inc.status == 0, "\(inc.stderr.suffix(3000))")
        #expect(tree(inc)["result"] as? String == "incremental", "\(tree(inc))")
        #expect(tree(inc)["base"] as? String == tree(cold)["key"] as? String)
        #expect(inc.stderr.contains("extend_rootfs: debian") && inc.stderr.contains("apt-get install into the cached tree: hello"))
        #expect(!inc.stderr.contains("INFO: mmdebstrap"), "build_rootfs did not run")

        let coldPackages = try packages(cold.dir), incPackages = try packages(inc.dir)
        #expect(try packages(warm.dir) == coldPackages)
        #expect(incPackages.isSuperset(of: coldPackages), "the base's packages stay: \(coldPackages.subtracting(incPackages))")
        #expect(names(incPackages.subtracting(coldPackages)).contains("hello"), "\(incPackages.subtracting(coldPackages))")

        let coldExtra = try await build(dir + "/cold-extra", ["--extra-pkg", "hello", "--no-cache"], env: env)
        #expect(coldExtra.status == 0, "\(coldExtra.stderr.suffix(3000))")
        #expect(try packages(coldExtra.dir) == incPackages, "the incremental build equals a cold build with the same EXTRA_PKG")
        // Where the bytes differ, only what docs/CACHE.md explains: dpkg's backup of its status
        // file (written by each dpkg run, so it holds the status before the last one).
        let diff = try await Fixtures.rootfs(["diff", inc.dir + "/debian.tar", coldExtra.dir + "/debian.tar"])
        let differing = diff.stdout.split(separator: "\n").filter { !$0.hasSuffix("differ") && !$0.hasPrefix("no difference") }
            .map { line in String(line.drop { $0 != "/" }.prefix { $0 != ":" && $0 != " " }) }
        #expect(Set(differing).isSubset(of: ["/var/lib/dpkg/status-old"]), "\(diff.stdout)")
    }

    /// --lock writes the build's packages; --locked installs exactly them; a lock pinning a version
    /// the repository lacks fails naming the package and the version.
    @Test func lockRoundTripAndAVersionTheRepositoryLacks() async throws {
        let dir = try Fixtures.temporaryDirectory("lock-debian")
        defer { FS.remove(dir) }
        let env = ["SOURCE_DATE_EPOCH": "1700000000", "ROOTFS_CACHE_DIR": dir + "/cache"]
        let lock = dir + "/debian.lock"
        let first = try await build(dir + "/first", ["--lock", lock, "--no-cache"], env: env)
        #expect(first.status == 0, "\(first.stderr.suffix(3000))")
        let parsed = try PackageLock.read(lock)
        let firstPackages = try packages(first.dir)
        #expect(Set(parsed.packages.map { "\($0.name)=\($0.version)" }) == firstPackages, "the lock is the manifest's package list")

        let again = try await build(dir + "/again", ["--locked", lock, "--no-cache"], env: env)
        #expect(again.status == 0, "\(again.stderr.suffix(3000))")
        #expect(try packages(again.dir) == firstPackages)

        // A version the repository lacks: the build fails naming the package and the version.
        let target = try #require(parsed.packages.first { $0.name == "hostname" } ?? parsed.packages.last)
        let text = try String(contentsOfFile: lock, encoding: .utf8)
            .replacingOccurrences(of: "package \(target.name) \(target.version)\n", with: "package \(target.name) 0.0.1~gone\n")
        try text.write(toFile: dir + "/gone.lock", atomically: true, encoding: .utf8)
        let gone = try await build(dir + "/gone", ["--locked", dir + "/gone.lock", "--no-cache"], env: env)
        #expect(gone.status != 0)
        #expect(gone.stderr.contains("no version 0.0.1~gone of package \(target.name)"), "\(gone.stderr.suffix(2500))")
        #expect(!FS.exists(dir + "/gone/debian.tar"))
    }
}
