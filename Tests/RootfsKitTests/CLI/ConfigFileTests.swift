import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// rootfs.toml, `rootfs summary`, the manifest's recorded config, `--from-manifest` and `rootfs verify`,
/// all through the real CLI.
@Suite struct ConfigFileTests {
    /// A rootfs.toml in its own directory, with paths relative to it.
    static func writeConfig(_ text: String, in dir: String, name: String = "rootfs.toml") throws -> String {
        try FS.makeDirectories(dir)
        let path = dir + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func unknownKeysAndBadValuesNameTheKeyAndTheFile() async throws {
        let dir = try Fixtures.temporaryDirectory("config-bad")
        defer { FS.remove(dir) }
        let typo = try Self.writeConfig("[distro]\nname = \"debian\"\nnmae = \"x\"\n", in: dir, name: "typo.toml")
        let r = try await Fixtures.rootfs(["build", "-C", typo, "--dry-run"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("unknown key 'distro.nmae' in \(typo)"), "\(r.stderr)")
        #expect(r.stderr.contains("architecture, distros-dirs, from-image, name, packages, version"), "\(r.stderr)")

        let section = try Self.writeConfig("[outputs]\ninitrd = \"x\"\n", in: dir, name: "section.toml")
        let s = try await Fixtures.rootfs(["summary", "-C", section])
        #expect(s.status != 0)
        #expect(s.stderr.contains("unknown key 'outputs' in \(section)"), "\(s.stderr)")

        let value = try Self.writeConfig("[distro]\nname = \"debian\"\n[output]\ncompression = \"lzma\"\n", in: dir, name: "value.toml")
        let v = try await Fixtures.rootfs(["build", "-C", value, "--dry-run"])
        #expect(v.status != 0)
        #expect(v.stderr.contains("\(value): key 'output.compression'") && v.stderr.contains("lzma"), "\(v.stderr)")

        let type = try Self.writeConfig("[image]\nfree-space = \"big\"\n", in: dir, name: "type.toml")
        let t = try await Fixtures.rootfs(["build", "debian", "-C", type, "--dry-run"])
        #expect(t.status != 0)
        #expect(t.stderr.contains("\(type): key 'image.free-space' has the wrong type: expected a whole number"), "\(t.stderr)")

        let syntax = try Self.writeConfig("[distro\nname = 1\n", in: dir, name: "syntax.toml")
        let x = try await Fixtures.rootfs(["build", "-C", syntax])
        #expect(x.status != 0)
        #expect(x.stderr.contains("\(syntax):1:"), "\(x.stderr)")
    }

    /// Flags beat the file, the file beats the environment, the environment beats the defaults;
    /// relative paths are the file's; lists add up.
    @Test(.requires(.busybox), .tags(.busybox)) func summaryShowsTheResolvedSettings() async throws {
        let distros = try busyboxDistros()
        let dir = try Fixtures.temporaryDirectory("config-summary")
        defer { FS.remove(distros); FS.remove(dir) }
        let config = try Self.writeConfig("""
            [distro]
            name = "bb"
            version = "5"
            packages = ["from-file"]
            distros-dirs = ["\(distros)"]
            [output]
            initrd = "out/bb.initrd"
            compression = "gzip"
            [image]
            free-space = 8
            [boot]
            memory = 256
            """, in: dir + "/conf")
        try FS.makeDirectories(dir + "/conf/out")
        try FS.makeDirectories(dir + "/elsewhere")
        let r = try await Fixtures.rootfs(["summary", "--json", "-C", config, "--os-version", "6", "--extra-pkg", "from-flag", "--arch", "x86_64"],
                                          environment: ["OS_VERSION": "4", "ARCH": "aarch64", "EXTRA_PKGS": "from-env"],
                                          workingDirectory: dir + "/elsewhere")
        #expect(r.status == 0, "\(r.stderr)")
        let doc = try jsonObject(r.stdout)
        let resolved = try #require(doc["config"] as? [String: Any])
        let distro = try #require(resolved["distro"] as? [String: Any])
        #expect(distro["version"] as? String == "6")
        #expect(distro["architecture"] as? String == "x86_64")
        #expect(distro["packages"] as? [String] == ["from-env", "from-file", "from-flag"])
        let output = try #require(resolved["output"] as? [String: Any])
        #expect(output["initrd"] as? String == dir + "/conf/out/bb.initrd")
        #expect(output["compression"] as? String == "gzip")
        #expect((resolved["image"] as? [String: Any])?["free-space"] as? Int == 8)
        #expect((resolved["boot"] as? [String: Any])?["memory"] as? Int == 256)
        let outputs = try #require(doc["outputs"] as? [[String: Any]])
        #expect(outputs.contains { $0["format"] as? String == "initrd" && $0["path"] as? String == dir + "/conf/out/bb.initrd" })
        #expect((doc["source"] as? String)?.hasPrefix(config) == true)

        // The file's version beats OS_VERSION; without a flag or a file, OS_VERSION beats config.sh's default.
        let fileOverEnv = try await Fixtures.rootfs(["summary", "--json", "-C", config], environment: ["OS_VERSION": "4"])
        #expect(((try jsonObject(fileOverEnv.stdout)["config"] as? [String: Any])?["distro"] as? [String: Any])?["version"] as? String == "5")
        let envOnly = try await Fixtures.rootfs(["summary", "--json", "bb", "--distros-dir", distros], environment: ["OS_VERSION": "4"])
        #expect(((try jsonObject(envOnly.stdout)["config"] as? [String: Any])?["distro"] as? [String: Any])?["version"] as? String == "4")

        // ./rootfs.toml is read when no distro is named; the text view is mkosi's sections.
        let text = try await Fixtures.rootfs(["summary"], workingDirectory: dir + "/conf")
        #expect(text.status == 0, "\(text.stderr)")
        #expect(text.stdout.contains("[distro]") && text.stdout.contains("version") && text.stdout.contains("initrd: \(dir)/conf/out/bb.initrd"),
                "\(text.stdout)")
    }

    /// A build from a config file records its resolved options; `--from-manifest` replays it to
    /// the same bytes (SOURCE_DATE_EPOCH from the manifest); `verify` passes, then names the output
    /// whose byte was flipped.
    @Test(.requires(.root, .busybox), .tags(.root, .busybox)) func manifestReplaysAndVerifies() async throws {
        let distros = try busyboxDistros()
        let dir = try Fixtures.temporaryDirectory("config-replay")
        defer { FS.remove(distros); FS.remove(dir) }
        let config = try Self.writeConfig("""
            [distro]
            name = "bb"
            packages = ["from-file"]
            distros-dirs = ["\(distros)"]
            [output]
            initrd = "first/bb.initrd"
            image = "first/bb.img"
            compression = "gzip"
            [image]
            free-space = 4
            [build]
            source-date-epoch = 1700000000
            """, in: dir)
        try FS.makeDirectories(dir + "/first")
        try FS.makeDirectories(dir + "/second")
        let first = try await Fixtures.rootfs(["build", "-C", config, "--extra-pkg", "from-flag"], environment: ["EXTRA_PKGS": "from-env"])
        #expect(first.status == 0, "\(first.stderr)")
        let manifestPath = dir + "/first/bb.manifest.json"
        let manifest = try JSONDecoder().decode(BuildManifest.self, from: try #require(FileManager.default.contents(atPath: manifestPath)))
        #expect(manifest.options.sourceDateEpoch == 1700000000)
        #expect(manifest.config?.distro?.packages == ["from-env", "from-file", "from-flag"])
        #expect(manifest.config?.output?.initrd == dir + "/first/bb.initrd")
        #expect(manifest.config?.build?.sourceDateEpoch == 1700000000)
        let head = try await ProcessRunner().capture(ToolCommand("git", ["-C", Fixtures.repositoryRoot, "rev-parse", "--short=12", "HEAD"]))
        #expect(manifest.tool.commit?.hasPrefix(head.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)) == true)
        #expect(manifest.tool.commitSource == "checkout")

        // The replay: no SOURCE_DATE_EPOCH and no EXTRA_PKGS in its environment, outputs elsewhere.
        let second = try await Fixtures.rootfs(["build", "--from-manifest", manifestPath,
                                                "--initrd", dir + "/second/bb.initrd", "--image", dir + "/second/bb.img"],
                                               environment: ["SOURCE_DATE_EPOCH": "", "EXTRA_PKGS": ""])
        #expect(second.status == 0, "\(second.stderr)")
        for name in ["bb.initrd", "bb.img"] {
            let a = try #require(FileManager.default.contents(atPath: dir + "/first/" + name))
            let b = try #require(FileManager.default.contents(atPath: dir + "/second/" + name))
            #expect(a == b, "\(name) differs between the build and its replay")
        }

        let ok = try await Fixtures.rootfs(["verify", manifestPath])
        #expect(ok.status == 0, "\(ok.stderr)")
        #expect(ok.stdout.contains("ok: initrd \(dir)/first/bb.initrd"), "\(ok.stdout)")
        #expect(ok.stdout.contains("ok: image \(dir)/first/bb.img"), "\(ok.stdout)")

        // One byte flipped in the middle of the initrd.
        let initrd = dir + "/first/bb.initrd"
        var bytes = [UInt8](try #require(FileManager.default.contents(atPath: initrd)))
        bytes[bytes.count / 2] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: initrd))
        let bad = try await Fixtures.rootfs(["verify", manifestPath, "--json"])
        #expect(bad.status == 1)
        #expect(bad.stderr.contains("do not match") && bad.stderr.contains(initrd), "\(bad.stderr)")
        #expect(!bad.stderr.contains(dir + "/first/bb.img:"), "only the changed output is named: \(bad.stderr)")
        let report = try jsonObject(bad.stdout)
        let items = try #require(report["outputs"] as? [[String: Any]])
        #expect(items.first { $0["path"] as? String == initrd }?["result"] as? String == "failed")
        #expect(items.first { $0["path"] as? String == dir + "/first/bb.img" }?["result"] as? String == "ok")
    }
}
