import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// Decodes a whole stdout as one JSON object (fails if anything else is on stdout).
func jsonObject(_ text: String) throws -> [String: Any] {
    let object = try JSONSerialization.jsonObject(with: Data(text.utf8))
    guard let dictionary = object as? [String: Any] else { throw RootfsError("not a JSON object: \(text.prefix(200))") }
    return dictionary
}

/// A busybox distro (TestDistros) in a fresh --distros-dir.
func busyboxDistros() throws -> String {
    try TestDistros.make(["bb": (TestDistros.busyboxConfig, TestDistros.busyboxLib)])
}

/// sha256sum's view of a file (an independent digest).
func sha256sum(_ path: String) async throws -> String {
    let output = try await ProcessRunner().capture(ToolCommand("sha256sum", [path]))
    return String(output.standardOutput.prefix(64))
}

@Suite(.requires(.busybox), .tags(.busybox)) struct JSONOutputTestsRequiringBusybox {
    @Test func listJSONIsTheWholeStdout() async throws {
        let r = try await Fixtures.rootfs(["list", "--json"])
        #expect(r.status == 0)
        let doc = try jsonObject(r.stdout)
        let distros = try #require(doc["distros"] as? [[String: Any]])
        #expect(distros.contains { $0["name"] as? String == "debian" })
    }

    @Test func buildJSONCarriesOutputsDigestsAndPhases() async throws {
        let distros = try busyboxDistros()
        let out = try Fixtures.temporaryDirectory("json-build")
        defer { FS.remove(distros); FS.remove(out) }
        let r = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "-r", out + "/rootfs",
                                           "--initrd", out + "/bb.initrd", "--image", out + "/bb.img", "--sbom", "--json"],
                                          environment: ["SOURCE_DATE_EPOCH": "1700000000"])
        #expect(r.status == 0, "\(r.stderr)")
        let doc = try jsonObject(r.stdout)
        #expect(doc["distro"] as? String == "bb")
        #expect(doc["osVersion"] as? String == "1")
        let outputs = try #require(doc["outputs"] as? [[String: Any]])
        #expect(outputs.compactMap { $0["kind"] as? String } == ["rootfs", "initrd", "image", "manifest", "sbom"])
        for output in outputs where output["kind"] as? String != "rootfs" {
            let path = try #require(output["path"] as? String)
            #expect(output["sha256"] as? String == (try await sha256sum(path)), "\(path)")
            let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int
            #expect((output["bytes"] as? Int) == size)
        }
        let phases = try #require(doc["phases"] as? [[String: Any]])
        let names = phases.compactMap { $0["name"] as? String }
        // The hook, the tree cache filling its entry (as root, the cache is on), the agent, each output, the cleanup.
        let expected = ["build_rootfs: bb", "tree cache: storing", "agent:", "initrd:", "image:", "manifest:", "cleanup:"]
        #expect(names.count == expected.count && zip(names, expected).allSatisfy { $0.hasPrefix($1) }, "\(names)")
        let slowest = try #require(doc["slowestPhase"] as? [String: Any])
        let maxSeconds = phases.compactMap { $0["seconds"] as? Double }.max()
        #expect(slowest["seconds"] as? Double == maxSeconds)
        // The human summary still reaches the user, on stderr.
        #expect(r.stderr.contains("initrd: \(out)/bb.initrd"))
        #expect(r.stderr.contains("slowest: "))

        // The manifest: distro, agent digest, options, outputs; no package database in a busybox tree.
        let manifest = try jsonObject(String(decoding: try Data(contentsOf: URL(fileURLWithPath: out + "/bb.manifest.json")), as: UTF8.self))
        let distro = try #require(manifest["distro"] as? [String: Any])
        #expect(distro["osName"] as? String == "busybox")
        #expect(distro["architecture"] as? String == hostArchitecture())
        let agent = try #require(manifest["agent"] as? [String: Any])
        #expect(agent["sha256"] as? String == (try await sha256sum(out + "/rootfs/usr/bin/rootfs-agent")))
        #expect(manifest["buildTime"] as? String == "2023-11-14T22:13:20Z")
        #expect(manifest["packageDatabase"] as? String == "none")
        let manifestOutputs = try #require(manifest["outputs"] as? [[String: Any]])
        #expect(manifestOutputs.compactMap { $0["kind"] as? String } == ["rootfs", "initrd", "image"])

        let spdx = try jsonObject(String(decoding: try Data(contentsOf: URL(fileURLWithPath: out + "/bb.spdx.json")), as: UTF8.self))
        #expect(spdx["spdxVersion"] as? String == "SPDX-2.3")
        #expect(spdx["dataLicense"] as? String == "CC0-1.0")
        #expect((spdx["documentNamespace"] as? String)?.hasPrefix("urn:uuid:") == true)
        let creation = try #require(spdx["creationInfo"] as? [String: Any])
        #expect(creation["created"] as? String == "2023-11-14T22:13:20Z")
    }

    @Test func failingBuildJSONIsAnErrorDocument() async throws {
        let r = try await Fixtures.rootfs(["build", "no-such-distro", "--json"])
        #expect(r.status == 1)
        let doc = try jsonObject(r.stdout)
        let error = try #require(doc["error"] as? [String: Any])
        #expect((error["message"] as? String)?.contains("unknown distro 'no-such-distro'") == true)
        #expect(r.stderr.contains("error: unknown distro"))
    }

    @Test func checkJSONReportsProblems() async throws {
        let distros = try busyboxDistros()
        let out = try Fixtures.temporaryDirectory("json-check")
        defer { FS.remove(distros); FS.remove(out) }
        let built = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "-r", out + "/rootfs", "-q"])
        #expect(built.status == 0, "\(built.stderr)")
        let good = try await Fixtures.rootfs(["check", out + "/rootfs", "--agent-init", "--json"])
        #expect(good.status == 0)
        let goodDoc = try jsonObject(good.stdout)
        #expect(goodDoc["ok"] as? Bool == true)
        #expect((goodDoc["problems"] as? [String])?.isEmpty == true)

        try FS.makeDirectories(out + "/empty/sbin")
        let bad = try await Fixtures.rootfs(["check", out + "/empty", "--json"])
        #expect(bad.status == 1)
        let badDoc = try jsonObject(bad.stdout)
        #expect(badDoc["ok"] as? Bool == false)
        let problems = try #require(badDoc["problems"] as? [String])
        #expect(problems.contains { $0.contains("the init /sbin/init is missing") }, "\(problems)")
        #expect(problems.contains { $0.contains("the agent is missing") }, "\(problems)")
    }
}

@Suite(.requires(.busybox), .tags(.busybox)) struct TerminalOutputTests {
    static func escapes(_ text: String) -> Bool { text.utf8.contains(0x1b) }

    @Test func pipedOutputHasNoEscapeSequences() async throws {
        let distros = try busyboxDistros()
        let out = try Fixtures.temporaryDirectory("plain")
        defer { FS.remove(distros); FS.remove(out) }
        let runs = [
            try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "-r", out + "/rootfs", "--initrd", out + "/bb.initrd", "-v"]),
            try await Fixtures.rootfs(["build", "no-such-distro"]),
            try await Fixtures.rootfs(["list"]),
            try await Fixtures.rootfs(["size", out + "/rootfs"]),
        ]
        #expect(runs[0].stderr.contains("entries,"), "writer progress: \(runs[0].stderr)")
        #expect(runs[1].stderr.hasPrefix("error: unknown distro"))
        for run in runs {
            #expect(!Self.escapes(run.stdout) && !Self.escapes(run.stderr), "\(run.stderr)")
        }
    }

    /// Runs rootfs on a pseudo-terminal (util-linux `script`), returning what the terminal got.
    static func onTerminal(_ arguments: [String], environment: [String: String]) async throws -> String {
        let command = ([Fixtures.rootfsBinary] + arguments).map(shellQuote).joined(separator: " ")
        // An empty NO_COLOR counts as unset (no-color.org); `swift test` may set it.
        var env = ["NO_COLOR": "", "TERM": "xterm"]
        env.merge(environment) { $1 }
        let output = try await ProcessRunner().capture(ToolCommand("script", ["-qc", command, "/dev/null"], environment: env))
        return output.standardOutput
    }

    @Test func terminalIsColouredUnlessNO_COLOR() async throws {
        let coloured = try await Self.onTerminal(["build", "no-such-distro"], environment: [:])
        #expect(coloured.contains("\u{1b}[1;31merror:"), "\(coloured.debugDescription)")
        let plain = try await Self.onTerminal(["build", "no-such-distro"], environment: ["NO_COLOR": "1"])
        #expect(plain.contains("error: unknown distro"))
        #expect(!Self.escapes(plain), "\(plain)")
    }
}

@Suite struct HelpAndVersionTests {
    /// Every command path of the tree, from the parser's own description of it.
    static func commandPaths() async throws -> [[String]] {
        let r = try await Fixtures.rootfs(["--experimental-dump-help"])
        #expect(r.status == 0)
        let doc = try jsonObject(r.stdout)
        var paths: [[String]] = []
        func walk(_ command: [String: Any], _ path: [String]) {
            paths.append(path)
            for sub in command["subcommands"] as? [[String: Any]] ?? [] {
                guard let name = sub["commandName"] as? String, name != "help" else { continue }
                walk(sub, path + [name])
            }
        }
        walk(try #require(doc["command"] as? [String: Any]), [])
        return paths
    }

    @Test func everySubcommandsHelpRenders() async throws {
        let paths = try await Self.commandPaths()
        for name in ["list", "build", "initrd", "image", "check", "boot", "new", "size"] {
            #expect(paths.contains([name]), "\(name) missing from \(paths)")
        }
        for path in paths {
            let r = try await Fixtures.rootfs(path + ["--help"])
            #expect(r.status == 0, "\(path): \(r.stderr)")
            #expect(r.stdout.contains("USAGE: rootfs" + path.map { " " + $0 }.joined()), "\(path): \(r.stdout)")
        }
    }

    @Test func versionNamesTheCheckoutsCommit() async throws {
        let r = try await Fixtures.rootfs(["--version"])
        #expect(r.status == 0)
        let head = try await ProcessRunner().capture(ToolCommand("git", ["-C", Fixtures.repositoryRoot, "rev-parse", "--short=12", "HEAD"]))
        let commit = head.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(r.stdout.hasPrefix("rootfs \(RootfsVersion.version) (commit \(commit)"), "\(r.stdout)")

        // A copy outside any checkout does not know its commit.
        let dir = try Fixtures.temporaryDirectory("version")
        defer { FS.remove(dir) }
        try FileManager.default.copyItem(atPath: Fixtures.rootfsBinary, toPath: dir + "/rootfs")
        let copy = try await ProcessRunner().capture(ToolCommand(dir + "/rootfs", ["--version"]))
        #expect(copy.standardOutput == "rootfs \(RootfsVersion.version) (commit unknown)\n")
    }

    @Test func completionScriptsAreGenerated() async throws {
        let bash = try await Fixtures.rootfs(["--generate-completion-script", "bash"])
        #expect(bash.status == 0)
        #expect(bash.stdout.contains("build") && bash.stdout.contains("--distros-dir"))
        let dir = try Fixtures.temporaryDirectory("completion")
        defer { FS.remove(dir) }
        try bash.stdout.write(toFile: dir + "/rootfs.bash", atomically: true, encoding: .utf8)
        _ = try await ProcessRunner().capture(ToolCommand("bash", ["-n", dir + "/rootfs.bash"]))
        for shell in ["zsh", "fish"] {
            let r = try await Fixtures.rootfs(["--generate-completion-script", shell])
            #expect(r.status == 0 && r.stdout.contains("size"), "\(shell)")
        }
    }
}

@Suite struct WriterProgressTests {
    @Test func initrdWriterReportsGrowingProgress() throws {
        let tree = try Fixtures.temporaryDirectory("progress")
        defer { FS.remove(tree) }
        for i in 0..<300 {
            try String(repeating: "x", count: i * 10).write(toFile: tree + "/file\(i)", atomically: false, encoding: .utf8)
        }
        final class Seen: @unchecked Sendable { var stats: [WriteStats] = [] }
        let seen = Seen()
        var writer = InitrdWriter(compression: .gzip)
        writer.progress = { seen.stats.append($0) }
        let final = try writer.write(tree: tree, to: tree + ".initrd")
        defer { FS.remove(tree + ".initrd") }
        #expect(seen.stats.count >= 4)
        #expect(seen.stats.map(\.entries) == seen.stats.map(\.entries).sorted())
        #expect(seen.stats.last!.entries <= final.entries)
        #expect(seen.stats.last!.inputBytes <= final.inputBytes)
        #expect(final.inputBytes == Int64((0..<300).map { $0 * 10 }.reduce(0, +)))
    }
}

/// `swift package rootfs ...` from the checkout. The nested SwiftPM uses its own
/// scratch path (.build-plugin-test) so it never waits for the outer build's lock;
/// its first invocation builds the package (a few minutes on 2 cores; over 20 on 2 cores
/// shared with other builds, so the limit only catches a hang).
@Suite(.serialized, .timeLimit(.minutes(45)), .requires(.swiftpm), .tags(.swiftpm)) struct PluginTestsRequiringSwiftPM {
    static func swiftPackage(_ arguments: [String]) async throws -> Fixtures.CLIResult {
        try await Fixtures.run(try #require(ProcessRunner.which("swift")),
                               ["package", "--scratch-path", Fixtures.repositoryRoot + "/.build-plugin-test",
                                "--allow-writing-to-package-directory", "rootfs"] + arguments,
                               workingDirectory: Fixtures.repositoryRoot)
    }

    @Test func pluginRunsTheCheckoutsRootfs() async throws {
        let distros = try Fixtures.temporaryDirectory("plugin-distros")
        defer { FS.remove(distros) }
        let started = Date()
        let created = try await Self.swiftPackage(["new", "plugged", "--distros-dir", distros])
        print(String(format: "PluginTestsRequiringSwiftPM: first invocation (with the build) took %.0f s", Date().timeIntervalSince(started)))
        #expect(created.status == 0, "\(created.stdout)\n\(created.stderr)")
        #expect(created.stdout.contains("created \(distros)/plugged"))
        #expect(FS.isRegularFile(distros + "/plugged/config.sh"))

        let listed = try await Self.swiftPackage(["list", "--distros-dir", distros])
        #expect(listed.status == 0)
        #expect(listed.stdout.contains("plugged"))
        #expect(listed.stdout.contains("debian"))

        // A failure: rootfs's message comes through and swift package fails, naming rootfs's status.
        let failed = try await Self.swiftPackage(["build", "no-such-distro"])
        #expect(failed.status != 0)
        #expect(failed.stdout.contains("error: unknown distro 'no-such-distro'"))
        #expect(failed.stderr.contains("exit code 1"))
        let invalid = try await Self.swiftPackage(["size", "/", "--top", "0"])
        #expect(invalid.status != 0)
        #expect(invalid.stderr.contains("exit code 64"), "\(invalid.stderr)")
    }
}

/// The manifest and the size report on the real Debian tree (mmdebstrap: root and Debian's mirror).
@Suite(.requires(.root, .network), .tags(.root, .network)) struct ManifestTestsRequiringRootAndNetwork {
    @Test func manifestListsExactlyWhatDpkgLists() async throws {
        let tree = try await Fixtures.debian.tree(agentInit: true)
        let query = try await ProcessRunner().capture(ToolCommand("dpkg-query", [
            "--admindir=\(tree.directory)/var/lib/dpkg", "-W", "-f", "${db:Status-Status}\t${Package}\t${Version}\t${Architecture}\n"]))
        let dpkg = query.standardOutput.split(separator: "\n").map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
            .filter { $0.first == "installed" }.map { "\($0[1]) \($0[2]) \($0[3])" }.sorted()
        #expect(dpkg.count > 50)
        let manifestPath = FS.parent(tree.initrd) + "/debian.manifest.json"
        let manifest = try jsonObject(String(decoding: try Data(contentsOf: URL(fileURLWithPath: manifestPath)), as: UTF8.self))
        #expect(manifest["packageDatabase"] as? String == "dpkg")
        let packages = try #require(manifest["packages"] as? [[String: Any]])
        let listed = packages.map { "\($0["name"] as? String ?? "?") \($0["version"] as? String ?? "?") \($0["architecture"] as? String ?? "?")" }
        #expect(listed == dpkg)
        let distro = try #require(manifest["distro"] as? [String: Any])
        #expect(distro["version"] as? String == "trixie")
        let outputs = try #require(manifest["outputs"] as? [[String: Any]])
        let initrd = try #require(outputs.first { $0["kind"] as? String == "initrd" })
        #expect(initrd["sha256"] as? String == (try await sha256sum(tree.initrd)))
    }

    @Test func sizeReportFindsTheLargestPackagesInTreeAndArchive() async throws {
        let tree = try await Fixtures.debian.tree(agentInit: true)
        let fromTree = try await Fixtures.rootfs(["size", tree.directory, "--top", "40", "--json"])
        #expect(fromTree.status == 0, "\(fromTree.stderr)")
        let doc = try jsonObject(fromTree.stdout)
        #expect(doc["packageSizes"] as? String == "files")
        let packages = try #require(doc["packages"] as? [[String: Any]])
        #expect(packages.count == 40)
        let bytes = packages.compactMap { $0["bytes"] as? Int }
        #expect(bytes == bytes.sorted(by: >))
        let libc = try #require(packages.first { $0["name"] as? String == "libc6" })
        #expect((libc["bytes"] as? Int ?? 0) > 5_000_000)
        let dirs = try #require(doc["directories"] as? [[String: Any]])
        #expect(dirs.first?["path"] as? String == "/usr")
        // Independently: find's regular files below /usr/share, each inode once.
        let find = try await ProcessRunner().capture(ToolCommand("find", [tree.directory + "/usr/share", "-type", "f", "-printf", "%i %s\n"]))
        var inodes: [Substring: Int] = [:]
        for line in find.standardOutput.split(separator: "\n") {
            let f = line.split(separator: " ")
            inodes[f[0]] = Int(f[1])
        }
        let usrShare = try #require(dirs.first { $0["path"] as? String == "/usr/share" })
        #expect(usrShare["bytes"] as? Int == inodes.values.reduce(0, +))
        #expect(usrShare["files"] as? Int == inodes.count)

        // The same tree as an archive: the same largest packages.
        let fromArchive = try await Fixtures.rootfs(["size", tree.initrd, "--top", "40", "--json"])
        #expect(fromArchive.status == 0, "\(fromArchive.stderr)")
        let archiveDoc = try jsonObject(fromArchive.stdout)
        let archivePackages = try #require(archiveDoc["packages"] as? [[String: Any]])
        #expect(archivePackages.prefix(10).compactMap { $0["name"] as? String } == packages.prefix(10).compactMap { $0["name"] as? String })
        let archiveDirs = try #require(archiveDoc["directories"] as? [[String: Any]])
        #expect(archiveDirs.prefix(5).compactMap { $0["path"] as? String } == dirs.prefix(5).compactMap { $0["path"] as? String })
        let text = try await Fixtures.rootfs(["size", tree.directory])
        #expect(text.stdout.contains("largest packages (dpkg; their files as found in the tree):"))
    }
}

/// `rootfs boot --json` on the boot tests' busybox initrd (QEMU, the test kernel).
@Suite(.requires(.root, .network, .qemu, .busybox), .tags(.root, .network, .qemu, .busybox)) struct BootJSONTestsRequiringQEMU {
    @Test func bootJSONCapturesTheCommandsOutput() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let r = try await Fixtures.rootfs(["boot", fixture.initrd, "--kernel", fixture.kernel, "--json", "--",
                                           "sh", "-c", "echo hello; echo oops >&2; exit 3"])
        #expect(r.status == 3, "\(r.stderr)")
        let doc = try jsonObject(r.stdout)
        #expect(doc["exitStatus"] as? Int == 3)
        #expect((doc["output"] as? String)?.contains("hello\n") == true)
        #expect((doc["output"] as? String)?.contains("oops\n") == true)
        #expect(["kvm", "tcg"].contains(doc["accelerator"] as? String ?? ""))
        #expect((doc["readySeconds"] as? Double ?? 0) > 0)
        #expect(doc["command"] as? [String] == ["sh", "-c", "echo hello; echo oops >&2; exit 3"])
    }
}
