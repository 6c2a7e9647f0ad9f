import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// dnf's package cache on a real `rootfs build fedora`: a tiny RPM (rpmbuild) in a repository
/// (createrepo_c) served over HTTP by busybox httpd, since dnf keeps no copy of a file:// package.
@Suite(.serialized, .requires(.dnf, .busybox), .tags(.dnf, .busybox)) struct DnfPackageCacheTestsRequiringDNF {
    /// Cold cache, no cache, then a warm cache with the RPM gone from the repository (only its
    /// metadata is served): the warm build downloads nothing, and the three trees hold the same bytes.
    @Test func warmBuildDownloadsNothingAndTheBytesAreTheSame() async throws {
        let dir = try Fixtures.temporaryDirectory("dnfcache")
        defer { FS.remove(dir) }
        let spec = """
        Name: rootfs-cached
        Version: 1.0
        Release: 1
        Summary: rootfs package cache test
        License: MIT
        BuildArch: noarch
        %description
        A file for the rootfs package cache test.
        %install
        mkdir -p %{buildroot}/usr/share/rootfs-cached
        echo 'from the cache' > %{buildroot}/usr/share/rootfs-cached/cached.txt
        %files
        /usr/share/rootfs-cached/cached.txt

        """
        try Catalog.write(spec, to: dir + "/cached.spec")
        try await Catalog.run("rpmbuild", ["-bb", "--define", "_topdir \(dir)/rpmbuild", dir + "/cached.spec"])
        try FS.makeDirectories(dir + "/repo")
        let rpm = "rootfs-cached-1.0-1.noarch.rpm"
        try FS.copyFile(dir + "/rpmbuild/RPMS/noarch/" + rpm, to: dir + "/repo/" + rpm, mode: 0o644)
        try await Catalog.run("createrepo_c", ["-q", dir + "/repo"])

        let port = Int.random(in: 20000...40000)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/bin/busybox")
        server.arguments = ["httpd", "-f", "-p", "127.0.0.1:\(port)", "-h", dir + "/repo"]
        server.standardInput = FileHandle.nullDevice
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        try server.run()
        // SIGKILL: the server inherits this process's blocked signals, SIGTERM among them.
        defer { kill(server.processIdentifier, SIGKILL); server.waitUntilExit() }
        let repomd = "http://127.0.0.1:\(port)/repodata/repomd.xml"
        var up = false
        for _ in 0..<100 where !up {
            up = Fixtures.status("/bin/busybox", ["wget", "-q", "-O", "/dev/null", repomd]) == 0
            if !up { usleep(100_000) }
        }
        #expect(up, "busybox httpd did not answer")

        let env = ["REPO_URL": "http://127.0.0.1:\(port)/", "PACKAGES": "rootfs-cached", "GPG_KEY_URL": "",
                   "SOURCE_DATE_EPOCH": "1700000000"]
        // --no-cache: the tree cache would skip the hook, and with it dnf.
        let args = ["build", "fedora", "--agent-init", "--format", "tar", "--no-manifest", "--no-cache"]
        let cache = dir + "/cache"
        let cold = try await Fixtures.rootfs(args + ["-O", dir + "/cold", "--cache-dir", cache], environment: env, workingDirectory: dir)
        #expect(cold.status == 0, "\(cold.stderr.suffix(3000))")
        let kept = (FileManager.default.subpaths(atPath: cache + "/packages") ?? []).filter { $0.hasSuffix("/" + rpm) }
        #expect(kept.count == 1 && kept.allSatisfy { $0.contains("/dnf/") }, "dnf kept the RPM in the cache: \(kept)")

        // No cache: a regular file where the cache directory should be.
        try "not a directory\n".write(toFile: dir + "/file", atomically: true, encoding: .utf8)
        let none = try await Fixtures.rootfs(args + ["-O", dir + "/none", "--cache-dir", dir + "/file"], environment: env,
                                             workingDirectory: dir)
        #expect(none.status == 0, "\(none.stderr.suffix(3000))")
        #expect(none.stderr.contains("warning: the package cache is not used"))

        // The repository no longer has the RPM: only the cache can give it.
        unlink(dir + "/repo/" + rpm)
        #expect(Fixtures.status("/bin/busybox", ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:\(port)/" + rpm]) != 0)
        let warm = try await Fixtures.rootfs(args + ["-O", dir + "/warm", "--cache-dir", cache], environment: env, workingDirectory: dir)
        #expect(warm.status == 0, "the warm build needed the repository's RPM: \(warm.stderr.suffix(3000))")

        // The same bytes with a cold cache, a warm cache and no cache (dnf_tidy drops dnf's history,
        // whose times no SOURCE_DATE_EPOCH reaches); `rootfs diff` names what differs if they do not.
        for (other, what) in [("warm", "cold and warm cache"), ("none", "cache and no cache")] {
            let diff = try await Fixtures.rootfs(["diff", dir + "/cold/fedora.tar", dir + "/\(other)/fedora.tar"])
            let same = try Data(contentsOf: URL(fileURLWithPath: dir + "/cold/fedora.tar"))
                == Data(contentsOf: URL(fileURLWithPath: dir + "/\(other)/fedora.tar"))
            #expect(same, "\(what): the tars differ: \(diff.stdout.prefix(2000))")
        }
        let paths = try Catalog.archivePaths(dir + "/warm/fedora.tar")
        #expect(paths.contains("usr/share/rootfs-cached/cached.txt"))
        #expect(!paths.contains { $0.hasSuffix(".rpm") || $0.hasPrefix("var/cache/dnf/") || $0.hasPrefix("var/cache/libdnf5/") })
    }
}

/// apk's cache option in the alpine hook's plan (apk itself is not installable on this Debian 12
/// host, so its real run is not tested here).
@Suite struct ApkPackageCachePlanTests {
    @Test func apkKeepsItsDownloadsInThePackageCacheOrUsesNone() async throws {
        let dir = try Fixtures.temporaryDirectory("apkcache")
        defer { FS.remove(dir) }
        let env = ["REPO_URL": "http://mirror.example.test/alpine"]
        let cold = try await Fixtures.rootfs(["build", "alpine", "--dry-run", "--cache-dir", dir + "/cache"], environment: env,
                                             workingDirectory: dir)
        // (Without apk on this host the dry run reports that and exits non-zero: its plan is still printed.)
        let without = try #require(Catalog.commandLine(cold.stdout, tool: "apk") ?? Catalog.commandLine(cold.stdout, tool: "apk.static"),
                                   "\(cold.stdout)")
        #expect(without.contains(" --no-cache ") && !without.contains("--cache-dir"), "\(without)")
        // A dry run uses the package cache only when it is there.
        let packages = try #require(cold.stdout.split(separator: "\n").first { $0.contains("packages: ") && $0.contains("/packages/alpine-") })
        let path = try #require(packages.split(separator: " ").first { $0.hasPrefix(dir) })
        try FS.makeDirectories(String(path))
        let warm = try await Fixtures.rootfs(["build", "alpine", "--dry-run", "--cache-dir", dir + "/cache"], environment: env,
                                             workingDirectory: dir)
        let with = try #require(Catalog.commandLine(warm.stdout, tool: "apk") ?? Catalog.commandLine(warm.stdout, tool: "apk.static"),
                                "\(warm.stdout)")
        #expect(with.contains(" --cache-dir \(path)/apk ") && !with.contains("--no-cache"), "\(with)")
    }
}
