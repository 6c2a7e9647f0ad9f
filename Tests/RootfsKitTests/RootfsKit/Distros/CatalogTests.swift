import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// Small helpers for the catalog tests.
enum Catalog {
    /// The line of a dry-run summary that runs `tool` (plan_rootfs output), or nil.
    static func commandLine(_ stdout: String, tool: String) -> String? {
        stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .first { $0.hasPrefix(tool + " ") }
    }

    /// Runs a real command, failing the test with its output when it fails.
    @discardableResult
    static func run(_ tool: String, _ args: [String], environment: [String: String] = [:]) async throws -> ToolOutput {
        try await ProcessRunner().capture(ToolCommand(tool, args, environment: environment))
    }

    static func write(_ text: String, to path: String, mode: mode_t = 0o644) throws {
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, mode)
    }

    /// Every entry path of an archive, without a leading "./" or "/".
    static func archivePaths(_ path: String) throws -> Set<String> {
        Set(try ArchiveReader.list(path).map { entry in
            var p = entry.path
            while p.hasPrefix("./") || p.hasPrefix("/") { p.removeFirst(p.hasPrefix("./") ? 2 : 1) }
            return p
        })
    }
}

/// `rootfs build DISTRO --dry-run` for the distros whose mirrors tests cannot
/// reach: the real CLI, the distro's real plan_rootfs(), nothing written.
@Suite struct DistroDryRunTests {
    @Test func ubuntuPlanUsesMmdebstrapWithTheGivenMirrorSuiteAndComponents() async throws {
        let dir = try Fixtures.temporaryDirectory("ubuntu-plan")
        defer { FS.remove(dir) }
        let r = try await Fixtures.rootfs(["build", "ubuntu", "--dry-run", "--os-version", "noble", "--extra-pkg", "vim-tiny"],
                                          environment: ["REPO_URL": "http://mirror.example.test/ubuntu"], workingDirectory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        let cmd = try #require(Catalog.commandLine(r.stdout, tool: "mmdebstrap"), "no mmdebstrap line in:\n\(r.stdout)")
        #expect(cmd.contains("--variant=minbase"))
        #expect(cmd.contains("--components=main,universe"))
        #expect(cmd.contains("--include=systemd,systemd-sysv,dbus,chrony,iptables,vim-tiny"))
        #expect(cmd.hasSuffix(" noble \(dir)/build/ubuntu/.rootfs.tmp-XXXXXX/rootfs http://mirror.example.test/ubuntu"))
        #expect(r.stdout.contains("OS_VERSION=noble"))
        #expect(r.stdout.contains("/distros/ubuntu"))
        #expect(r.stdout.contains("initrd: \(dir)/build/ubuntu/ubuntu.initrd"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty, "a dry run wrote something")
    }

    @Test func lcowPlanExtractsDebianPackagesAndTheAgentIsInit() async throws {
        let dir = try Fixtures.temporaryDirectory("lcow-plan")
        defer { FS.remove(dir) }
        let r = try await Fixtures.rootfs(["build", "lcow", "--dry-run", "--extra-pkg", "kmod", "--format", "vhd"],
                                          environment: ["REPO_URL": ""], workingDirectory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        let cmd = try #require(Catalog.commandLine(r.stdout, tool: "mmdebstrap"), "no mmdebstrap line in:\n\(r.stdout)")
        #expect(cmd.contains("--variant=extract"))
        #expect(cmd.contains("--include=base-files,busybox-static,runc,iproute2,e2fsprogs,kmod"))
        #expect(cmd.hasSuffix(" trixie \(dir)/build/lcow/.rootfs.tmp-XXXXXX/rootfs"))
        #expect(Catalog.commandLine(r.stdout, tool: "lcow_layout") != nil)
        #expect(r.stdout.contains("INIT_PROCESS=agent"))
        #expect(r.stdout.contains("lcow.vhd"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty, "a dry run wrote something")
    }

    /// lcow's DEFAULT_FORMATS: kernel+initrd and vhdx when no output is asked; they need --kernel.
    @Test func lcowDefaultOutputsAreKernelInitrdAndVHDX() async throws {
        let dir = try Fixtures.temporaryDirectory("lcow-defaults")
        defer { FS.remove(dir) }
        try "kernel".write(toFile: dir + "/vmlinuz", atomically: false, encoding: .utf8)
        let r = try await Fixtures.rootfs(["build", "lcow", "--dry-run", "--kernel", dir + "/vmlinuz"],
                                          environment: ["REPO_URL": ""], workingDirectory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("\(dir)/build/lcow/lcow.vhdx"), "\(r.stdout)")
        #expect(r.stdout.contains("\(dir)/build/lcow/lcow"), "\(r.stdout)")
        #expect(!r.stdout.contains("lcow.img") && !r.stdout.contains("lcow.initrd"), "\(r.stdout)")
        // The dry run lists the problem with the plan and fails; the build refuses it before the hook.
        let refused = try await Fixtures.rootfs(["build", "lcow", "--dry-run"], environment: ["REPO_URL": ""], workingDirectory: dir)
        #expect(refused.status != 0 && refused.stdout.contains("need a kernel for kernel+initrd") && refused.stdout.contains("--kernel"),
                "\(refused.stdout)")
        let real = try await Fixtures.rootfs(["build", "lcow"], environment: ["REPO_URL": ""], workingDirectory: dir)
        #expect(real.status != 0 && real.stderr.contains("need a kernel for kernel+initrd") && !real.stderr.contains("==> build_rootfs"),
                "\(real.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["vmlinuz"], "a dry run wrote something")
    }

    @Test func ubuntuWithoutAMirrorIsRefusedBeforeAnythingIsWritten() async throws {
        let dir = try Fixtures.temporaryDirectory("ubuntu-nomirror")
        defer { FS.remove(dir) }
        let r = try await Fixtures.rootfs(["build", "ubuntu", "--agent-init"], environment: ["REPO_URL": "", "MIRROR": ""],
                                          workingDirectory: dir)
        #expect(r.status != 0)
        #expect(r.stderr.contains("ubuntu needs REPO_URL"))
        #expect(r.stderr.contains("Ubuntu mirror"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty, "a refused build wrote something")
        // The dry run reports it as a problem instead.
        let dry = try await Fixtures.rootfs(["build", "ubuntu", "--dry-run"], environment: ["REPO_URL": "", "MIRROR": ""],
                                            workingDirectory: dir)
        #expect(dry.status != 0, "a dry run with problems fails")
        #expect(dry.stdout.contains("problems"))
        #expect(dry.stdout.contains("ubuntu needs REPO_URL"))
    }

    @Test func centosPlanGeneratesADnfConfWithBothRepositoriesAndWarnsWithoutAKey() async throws {
        let dir = try Fixtures.temporaryDirectory("centos-plan")
        defer { FS.remove(dir) }
        let r = try await Fixtures.rootfs(["build", "centos", "--dry-run", "--agent-init"],
                                          environment: ["REPO_URL": "http://mirror.example.test/10-stream", "GPG_KEY_URL": ""],
                                          workingDirectory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        let cmd = try #require(Catalog.commandLine(r.stdout, tool: "dnf") ?? Catalog.commandLine(r.stdout, tool: "dnf5"),
                               "no dnf line in:\n\(r.stdout)")
        #expect(cmd.contains("--installroot=\(dir)/build/centos/.rootfs.tmp-XXXXXX/rootfs"))
        #expect(cmd.contains("--releasever=10"))
        #expect(cmd.contains("--enablerepo=baseos"))
        #expect(cmd.contains("--enablerepo=appstream"))
        // --agent-init: no systemd in the package list.
        #expect(cmd.hasSuffix("install -- chrony iptables-nft"))
        #expect(r.stdout.contains("baseurl=http://mirror.example.test/10-stream/BaseOS/$basearch/os/"))
        #expect(r.stdout.contains("baseurl=http://mirror.example.test/10-stream/AppStream/$basearch/os/"))
        #expect(r.stdout.contains("install_weak_deps=False"))
        #expect(r.stdout.contains("tsflags=nodocs"))
        #expect(r.stdout.contains("gpgcheck=0"))
        #expect(r.stdout.contains("warning: no GPG_KEY_URL"))
        // With a key: gpgcheck on, no warning.
        let signed = try await Fixtures.rootfs(["build", "centos", "--dry-run"],
                                               environment: ["METALINK": "http://mirror.example.test/metalink?repo=centos-@REPO@-10-stream&arch=$basearch",
                                                             "REPO_URL": "", "GPG_KEY_URL": "file:///etc/pki/centos.key"],
                                               workingDirectory: dir)
        #expect(signed.status == 0, "\(signed.stderr)")
        #expect(signed.stdout.contains("metalink=http://mirror.example.test/metalink?repo=centos-baseos-10-stream&arch=$basearch"))
        #expect(signed.stdout.contains("gpgcheck=1"))
        #expect(signed.stdout.contains("gpgkey=file:///etc/pki/centos.key"))
        #expect(!signed.stdout.contains("warning: no GPG_KEY_URL"))
        #expect(signed.stdout.contains("install -- systemd dbus-broker chrony iptables-nft"))
    }

    @Test func alpinePlanUsesApkInitdbWithTheBranchRepositoriesAndTheAgentAsInit() async throws {
        let dir = try Fixtures.temporaryDirectory("alpine-plan")
        defer { FS.remove(dir) }
        let r = try await Fixtures.rootfs(["build", "alpine", "--dry-run", "--os-version", "3.22"],
                                          environment: ["REPO_URL": "http://mirror.example.test/alpine", "APK_KEYS_DIR": dir + "/no-keys"],
                                          workingDirectory: dir)
        let apkHere = ProcessRunner.which("apk") != nil || ProcessRunner.which("apk.static") != nil
        // Without apk here the plan has a problem (the host lacks the tools), and the dry run fails.
        #expect((r.status == 0) == apkHere, "\(r.stderr)")
        let cmd = try #require(Catalog.commandLine(r.stdout, tool: "apk") ?? Catalog.commandLine(r.stdout, tool: "apk.static"),
                               "no apk line in:\n\(r.stdout)")
        #expect(cmd.contains("--root \(dir)/build/alpine/.rootfs.tmp-XXXXXX/rootfs --initdb"))
        #expect(cmd.contains("--repository http://mirror.example.test/alpine/v3.22/main"))
        #expect(cmd.contains("--repository http://mirror.example.test/alpine/v3.22/community"))
        #expect(cmd.contains("--allow-untrusted"))
        #expect(cmd.hasSuffix("add -- alpine-baselayout busybox musl chrony iptables"))
        // Alpine has no systemd: the agent is init even without --agent-init.
        #expect(r.stdout.contains("init: /sbin/init -> /usr/bin/rootfs-agent"))
        #expect(r.stdout.contains("INIT_PROCESS=agent"))
        if ProcessRunner.which("apk") == nil && ProcessRunner.which("apk.static") == nil {
            // Missing host tools are reported, not fatal, in a dry run...
            #expect(r.stdout.contains("needs apk or apk.static on this host"))
            // ...and refused, clearly, in a real build.
            let real = try await Fixtures.rootfs(["build", "alpine"], environment: ["REPO_URL": "http://mirror.example.test/alpine"],
                                                 workingDirectory: dir)
            #expect(real.status != 0)
            #expect(real.stderr.contains("needs apk or apk.static on this host"))
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty, "a dry run wrote something")
    }

    @Test func dryRunReportsAMissingAgentInsteadOfFailing() async throws {
        let dir = try Fixtures.temporaryDirectory("plan-noagent")
        defer { FS.remove(dir) }
        let r = try await Fixtures.rootfs(["build", "debian", "--dry-run", "--agent", dir + "/no-such-agent",
                                           "-r", dir + "/out"], workingDirectory: dir)
        #expect(r.status != 0, "a dry run with problems fails: \(r.stderr)")
        #expect(r.stdout.contains("--agent \(dir)/no-such-agent: no such file"))
        #expect(r.stdout.contains("hook invocation"))
        #expect(r.stdout.contains("ROOTFS_DIR=\(dir)/.out.tmp-XXXXXX/rootfs"))
        #expect(r.stderr.contains("a build would stop"))
        let real = try await Fixtures.rootfs(["build", "debian", "--agent", dir + "/no-such-agent", "-r", dir + "/out"],
                                             workingDirectory: dir)
        #expect(real.status != 0)
        #expect(real.stderr.contains("no such file"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
    }

    @Test func aDistroExcludingTheHostArchitectureIsRefused() async throws {
        let dir = try Fixtures.temporaryDirectory("archexclude")
        defer { FS.remove(dir) }
        let arch = hostArchitecture()
        try FS.makeDirectories(dir + "/distros/noarch")
        try Catalog.write("OS_NAME=noarch\nOS_VERSION=1\nINIT_PROCESS=agent\nARCH_EXCLUDE_LIST=\"ppc64le \(arch)\"\n",
                          to: dir + "/distros/noarch/config.sh")
        try Catalog.write("build_rootfs() { mkdir -p \"$1/marker\"; }\n", to: dir + "/distros/noarch/rootfs_lib.sh")
        for extra in [[], ["--dry-run"]] {
            let r = try await Fixtures.rootfs(["build", "noarch", "--distros-dir", dir + "/distros", "-r", dir + "/out"] + extra,
                                              workingDirectory: dir)
            #expect(r.status != 0)
            #expect(r.stderr.contains("cannot be built for \(arch)"))
            #expect(r.stderr.contains("ARCH_EXCLUDE_LIST"))
            #expect(r.stderr.contains(dir + "/distros/noarch/config.sh"))
            #expect(!FS.exists(dir + "/out"))
        }
    }
}

/// The helpers hooks get, run by real bash.
@Suite struct HookHelperTests {
    @Test func printCommandQuotesSoThatBashReadsBackTheSameArguments() async throws {
        let args = ["mmdebstrap", "--aptopt=Acquire::Languages \"none\"", "it's", "", "a*b", "$HOME", "plain,words=1"]
        let script = HookLibrary.text + "\nline=$(print_command \"$@\")\nprintf '%s\\n' \"$line\"\neval \"set -- $line\"\nprintf '%s\\0' \"$@\""
        let out = try await ProcessRunner().capture(ToolCommand("bash", ["--noprofile", "--norc", "-c", script, "t"] + args))
        let parts = out.standardOutput.split(separator: "\n", maxSplits: 1).map(String.init)
        #expect(parts[0].hasPrefix("mmdebstrap '--aptopt=Acquire::Languages \"none\"' "))
        #expect(parts[1].split(separator: "\0", omittingEmptySubsequences: false).dropLast().map(String.init) == args)
    }

    @Test func dieInConfigShIsReportedWithItsMessage() async throws {
        let dir = try Fixtures.temporaryDirectory("config-die")
        defer { FS.remove(dir) }
        try FS.makeDirectories(dir + "/d/strict")
        try Catalog.write("OS_NAME=strict\n[ -n \"${WIDGET:-}\" ] || die \"strict needs WIDGET: set WIDGET to your widget\"\n",
                          to: dir + "/d/strict/config.sh")
        try Catalog.write("build_rootfs() { :; }\n", to: dir + "/d/strict/rootfs_lib.sh")
        let r = try await Fixtures.rootfs(["build", "strict", "--distros-dir", dir + "/d", "--dry-run"], workingDirectory: dir)
        #expect(r.status != 0)
        #expect(r.stderr.contains("error: \(dir)/d/strict/config.sh refuses: strict needs WIDGET: set WIDGET to your widget"))
        let ok = try await Fixtures.rootfs(["build", "strict", "--distros-dir", dir + "/d", "--dry-run"],
                                           environment: ["WIDGET": "w"], workingDirectory: dir)
        #expect(ok.status == 0, "\(ok.stderr)")
    }
}
