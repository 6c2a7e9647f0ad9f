import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// A busybox distro whose hook first touches `marker`: a test proves a refused build never ran it.
func markedBusyboxDistros(marker: String, name: String = "bb", extraLib: String = "") throws -> String {
    let lib = "build_rootfs() { touch \(shellQuote(marker)); __busybox_build \"$@\"; }\n"
        + TestDistros.busyboxLib.replacingOccurrences(of: "build_rootfs()", with: "__busybox_build()") + extraLib
    return try TestDistros.make([name: (TestDistros.busyboxConfig, lib)])
}

/// Every input is checked before the hook runs, in the build and in the dry run alike, and a
/// dry run that finds problems fails, listing all of them.
@Suite(.requires(.busybox), .tags(.busybox)) struct PreflightTestsRequiringBusybox {
    @Test func missingKernelAndFileSourceStopTheBuildAndTheDryRunBeforeTheHook() async throws {
        let dir = try Fixtures.temporaryDirectory("preflight")
        defer { FS.remove(dir) }
        let marker = dir + "/hook-ran"
        let distros = try markedBusyboxDistros(marker: marker)
        defer { FS.remove(distros) }
        let cases: [(args: [String], expected: [String])] = [
            (["--format", "kernel+initrd", "--kernel", dir + "/missing"], ["--kernel \(dir)/missing is not a file (no such file)"]),
            (["--initrd", dir + "/bb.initrd", "--file", "/etc/x=\(dir)/typo"], ["--file /etc/x=\(dir)/typo: the host file \(dir)/typo does not exist"]),
            // Both at once: both are reported, not only the first.
            (["--format", "kernel+initrd", "--kernel", dir + "/missing", "--file", "/etc/x=\(dir)/typo"],
             ["2 problems stop this build", "1. --file /etc/x=\(dir)/typo", "2. --kernel \(dir)/missing is not a file"]),
        ]
        for (args, expected) in cases {
            let base = ["build", "bb", "--distros-dir", distros] + args
            let dry = try await Fixtures.rootfs(base + ["--dry-run"], workingDirectory: dir)
            #expect(dry.status != 0, "\(args): \(dry.stdout)")
            #expect(dry.stderr.contains("a build would stop on \(expected.count == 1 ? 1 : 2) problem(s)"), "\(args): \(dry.stderr)")
            let dryProblems = dry.stdout.components(separatedBy: "problems (a build would stop here):").last ?? ""
            for line in expected.filter({ !$0.hasPrefix("2 problems") }) {
                #expect(dryProblems.contains(String(line.drop { $0 == "1" || $0 == "2" || $0 == "." || $0 == " " })), "\(args): \(dry.stdout)")
            }
            let real = try await Fixtures.rootfs(base, workingDirectory: dir)
            #expect(real.status != 0)
            for line in expected { #expect(real.stderr.contains(line), "\(args): \(real.stderr)") }
            #expect(real.stderr.contains("hint: "), "\(real.stderr)")
            #expect(!real.stderr.contains("==> build_rootfs"), "\(real.stderr)")
            #expect(!FS.exists(marker), "\(args): the hook ran")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty, "a refused build wrote something")
    }

    /// Whether the hook installs a kernel is known only once it has run: checked then, before
    /// any writer (the raw image asked first is not written either).
    @Test func aKernelFormatOnATreeWithoutAKernelStopsBeforeAnyOutput() async throws {
        let dir = try Fixtures.temporaryDirectory("preflight-iso")
        defer { FS.remove(dir) }
        let distros = try markedBusyboxDistros(marker: dir + "/hook-ran")
        defer { FS.remove(distros) }
        let args = ["build", "bb", "--distros-dir", distros, "--image", dir + "/bb.img", "--format", "iso-bios"]
        let dry = try await Fixtures.rootfs(args + ["--dry-run"], workingDirectory: dir)
        #expect(dry.status == 0, "\(dry.stderr)")
        #expect(dry.stdout.contains("kernel: the tree's /boot/vmlinuz* (no --kernel)"), "\(dry.stdout)")
        let real = try await Fixtures.rootfs(args, workingDirectory: dir)
        #expect(real.status != 0)
        #expect(real.stderr.contains("iso-bios needs a kernel, and the tree build_rootfs made has none in /boot"), "\(real.stderr)")
        #expect(!real.stderr.contains("==> image:"), "a writer ran: \(real.stderr)")
        #expect(!FS.exists(dir + "/bb.img"))
        #expect(FS.exists(dir + "/hook-ran"))
    }

    @Test func dryRunJSONIsStructured() async throws {
        let dir = try Fixtures.temporaryDirectory("preflight-json")
        defer { FS.remove(dir) }
        let distros = try markedBusyboxDistros(marker: dir + "/hook-ran")
        defer { FS.remove(distros) }
        let base = ["build", "bb", "--distros-dir", distros, "--dry-run", "--json", "--extra-pkg", "extra1",
                    "--initrd", dir + "/bb.initrd", "--format", "raw"]
        let good = try await Fixtures.rootfs(base, workingDirectory: dir)
        #expect(good.status == 0, "\(good.stderr)")
        let doc = try jsonObject(good.stdout)
        #expect(doc["dryRun"] as? Bool == true)
        let config = try #require(doc["config"] as? [String: Any])
        #expect(config["distro"] as? String == "bb")
        #expect(config["osVersion"] as? String == "1")
        #expect(config["architecture"] as? String == hostArchitecture())
        #expect(config["extraPackages"] as? [String] == ["extra1"])
        #expect((config["values"] as? [String: String])?["OS_NAME"] == "busybox")
        let outputs = try #require(doc["outputs"] as? [[String: Any]])
        #expect(outputs.compactMap { $0["format"] as? String } == ["initrd", "raw"], "\(outputs)")
        #expect(outputs.first?["path"] as? String == dir + "/bb.initrd")
        let engine = try #require(doc["engine"] as? [String: Any])
        #expect(engine["kind"] as? String == "host" && engine["location"] as? String == "local")
        #expect((doc["problems"] as? [Any])?.isEmpty == true)
        #expect(doc["sections"] == nil, "text lines inside JSON")

        let bad = try await Fixtures.rootfs(base + ["--kernel", dir + "/missing", "--format", "kernel+initrd",
                                                    "--file", "/etc/x=\(dir)/typo"], workingDirectory: dir)
        #expect(bad.status != 0)
        let badDoc = try jsonObject(bad.stdout)
        let problems = try #require(badDoc["problems"] as? [[String: Any]])
        #expect(problems.count == 2, "\(problems)")
        #expect((problems.first?["message"] as? String)?.contains("--file /etc/x=\(dir)/typo") == true, "\(problems)")
        #expect((problems.last?["message"] as? String)?.contains("--kernel \(dir)/missing") == true, "\(problems)")
        #expect(problems.allSatisfy { ($0["hint"] as? String)?.isEmpty == false }, "\(problems)")
        #expect(!FS.exists(dir + "/hook-ran"))
    }

    /// build.log and --log-file end with the error, its hint and the summary; `list --log-file`
    /// writes its file; a successful build shows its cleanup phase.
    @Test func logsHoldTheFailure() async throws {
        let dir = try Fixtures.temporaryDirectory("preflight-logs")
        defer { FS.remove(dir) }
        let lib = "build_rootfs() { echo 'hook output'; hint 'set BOOM=off'; die 'boom went the hook'; }\n"
        let distros = try TestDistros.make(["boom": (TestDistros.busyboxConfig, lib)])
        defer { FS.remove(distros) }
        let log = dir + "/user.log"
        let r = try await Fixtures.rootfs(["build", "boom", "--distros-dir", distros, "-r", dir + "/rootfs", "--log-file", log],
                                          workingDirectory: dir)
        #expect(r.status != 0)
        #expect(r.stderr.components(separatedBy: "error: build_rootfs()").count == 2, "the error is shown once: \(r.stderr)")
        let buildLog = dir + "/build/boom/build.log"
        for path in [log, buildLog] {
            let text = try String(contentsOfFile: path, encoding: .utf8)
            #expect(text.contains("hook output"), "\(path): \(text)")
            #expect(text.contains("error: build_rootfs() of distro 'boom' failed (exit status 1): boom went the hook"), "\(path): \(text)")
            #expect(text.contains("hint: set BOOM=off; the hook is build_rootfs()"), "\(path): \(text)")
            #expect(text.contains("build of boom failed after "), "\(path): \(text)")
            #expect(text.contains("in phase 'build_rootfs: boom"), "\(path): \(text)")
        }
        // A build refused before it starts: the error is in --log-file too.
        let refused = try await Fixtures.rootfs(["build", "no-such-distro", "--log-file", log])
        #expect(refused.status != 0)
        #expect(try String(contentsOfFile: log, encoding: .utf8).contains("error: unknown distro 'no-such-distro'"))

        let listLog = dir + "/list.log"
        let list = try await Fixtures.rootfs(["list", "--log-file", listLog])
        #expect(list.status == 0)
        let listed = try String(contentsOfFile: listLog, encoding: .utf8)
        #expect(listed.contains("debian") && listed == list.stdout, "\(listed)")

        let bb = try busyboxDistros()
        defer { FS.remove(bb) }
        let good = try await Fixtures.rootfs(["build", "bb", "--distros-dir", bb, "--initrd", dir + "/bb.initrd"], workingDirectory: dir)
        #expect(good.status == 0, "\(good.stderr)")
        let phases = good.stderr.split(separator: "\n").filter { $0.hasPrefix("==> ") }.map { String($0.dropFirst(4)) }
        #expect(phases.last?.hasPrefix("cleanup: ") == true, "\(phases)")
    }

    /// On a terminal a phase line shows its elapsed time; piped output never does.
    @Test func phaseLinesTickOnATerminalOnly() async throws {
        let dir = try Fixtures.temporaryDirectory("preflight-tick")
        defer { FS.remove(dir) }
        let distros = try markedBusyboxDistros(marker: dir + "/hook-ran", name: "slow")
        defer { FS.remove(distros) }
        // The hook says nothing for 2.5 s.
        try (String(contentsOfFile: distros + "/slow/rootfs_lib.sh", encoding: .utf8)
             .replacingOccurrences(of: "touch ", with: "sleep 2.5; touch "))
            .write(toFile: distros + "/slow/rootfs_lib.sh", atomically: true, encoding: .utf8)
        let args = ["build", "slow", "--distros-dir", distros, "--initrd", dir + "/slow.initrd", "--no-cache"]
        let terminal = try await TerminalOutputTests.onTerminal(args, environment: ["ROOTFS_CACHE_DIR": dir + "/cache"])
        // (A terminal ends lines with \r\n: one Character, so split on the scalars.)
        let ticks = terminal.components(separatedBy: .newlines)
            .filter { $0.contains("build_rootfs: slow") && ($0.contains("(1 s)") || $0.contains("(2 s)")) }
        #expect(!ticks.isEmpty, "\(terminal.debugDescription)")
        let piped = try await Fixtures.rootfs(args, workingDirectory: dir)
        #expect(piped.status == 0, "\(piped.stderr)")
        #expect(!["(0 s)", "(1 s)", "(2 s)", "(3 s)"].contains { piped.stderr.contains($0) }, "\(piped.stderr)")
    }
}

@Suite struct DebianPlanTests {
    /// Debian's plan_rootfs: its dry run shows the mmdebstrap command that build_rootfs runs.
    @Test func debianDryRunShowsMmdebstrap() async throws {
        let dir = try Fixtures.temporaryDirectory("debian-plan")
        defer { FS.remove(dir) }
        let r = try await Fixtures.rootfs(["build", "debian", "--dry-run", "--os-version", "bookworm", "--extra-pkg", "kmod"],
                                          environment: ["REPO_URL": ""], workingDirectory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(!r.stdout.contains("has no plan_rootfs()"), "\(r.stdout)")
        let cmd = try #require(Catalog.commandLine(r.stdout, tool: "mmdebstrap"), "no mmdebstrap line in:\n\(r.stdout)")
        #expect(cmd.contains("--variant=minbase"))
        #expect(cmd.contains("--include=systemd,systemd-sysv,kmod"))
        #expect(cmd.hasSuffix(" bookworm \(dir)/build/debian/.rootfs.tmp-XXXXXX/rootfs"), "\(cmd)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty, "a dry run wrote something")
    }
}

/// As an ordinary user (setpriv, as the rootless Debian tests): what needs root or subordinate
/// ids is refused before the hook, in the dry run and the build.
@Suite(.serialized, .requires(.root, .busybox), .tags(.root, .busybox)) struct RootlessPreflightTestsRequiringRoot {
    static let user = "rootfs-nosubid"

    /// A user with no /etc/subuid or /etc/subgid range.
    static func ensureUser() async throws {
        let runner = ProcessRunner()
        if (try? await runner.capture(ToolCommand("id", ["-u", user]))) == nil {
            try await runner.capture(ToolCommand("useradd", ["--create-home", "--shell", "/bin/bash", user]))
        }
        // useradd gives a new user ranges of its own: removed, range by range.
        for file in ["/etc/subuid", "/etc/subgid"] {
            let text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n") where line.hasPrefix(user + ":") {
                let fields = line.split(separator: ":")
                guard fields.count == 3, let start = Int(fields[1]), let count = Int(fields[2]), count > 0 else { continue }
                try await runner.capture(ToolCommand("usermod", [file == "/etc/subuid" ? "--del-subuids" : "--del-subgids",
                                                                 "\(start)-\(start + count - 1)", user]))
            }
        }
    }

    static func run(_ arguments: [String], in directory: String) async throws -> Fixtures.CLIResult {
        var env = ["HOME": "/home/" + user, "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"]
        env["ROOTFS_CACHE_DIR"] = directory + "/cache"
        let command = ["--reuid", user, "--regid", user, "--init-groups", "env"] + env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" } + arguments
        return try await Fixtures.run(try #require(ProcessRunner.which("setpriv")), command, workingDirectory: directory)
    }

    @Test func noSubordinateIdsAndRootlessSquashfsAreRefusedBeforeTheHook() async throws {
        try await Self.ensureUser()
        let dir = try Fixtures.temporaryDirectory("rootless-preflight")
        defer { FS.remove(dir) }
        let staged = try await RootlessUser.stage(in: dir)
        let marker = staged.run + "/hook-ran"
        let distros = try markedBusyboxDistros(marker: marker)
        defer { FS.remove(distros) }
        try await ProcessRunner().capture(ToolCommand("chmod", ["-R", "a+rX", distros]))
        try await ProcessRunner().capture(ToolCommand("chown", [Self.user, staged.run]))

        for extra in [["--dry-run"], []] {
            let debian = try await Self.run([staged.binary, "build", "debian", "--distros-dir", staged.distros, "--format", "tar"] + extra,
                                            in: staged.run)
            let text = debian.stdout + debian.stderr
            #expect(debian.status != 0, "\(extra): \(text)")
            #expect(text.contains("the ordinary user \(Self.user)") && text.contains("/etc/subuid and /etc/subgid"), "\(extra): \(text)")
            #expect(text.contains("usermod --add-subuids"), "\(extra): \(text)")
            #expect(!text.contains("==> build_rootfs"), "\(extra): \(text)")

            let squashfs = try await Self.run([staged.binary, "build", "bb", "--distros-dir", distros, "--format", "squashfs"] + extra,
                                              in: staged.run)
            #expect(squashfs.status != 0)
            #expect((squashfs.stdout + squashfs.stderr).contains("--format squashfs needs root"), "\(extra): \(squashfs.stderr)")
            #expect(!FS.exists(marker), "\(extra): the hook ran")
        }
        // erofs is not refused: mkfs.erofs's image gets the tar's owners back (ErofsOwnership), without root.
        let erofs = try await Self.run([staged.binary, "build", "bb", "--distros-dir", distros, "--format", "erofs"], in: staged.run)
        #expect(erofs.status == 0, "\(erofs.stderr)")
        let image = staged.run + "/build/bb/bb.erofs"
        #expect(try await Fixtures.run("/usr/bin/fsck.erofs", [image]).status == 0)
    }
}
