import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// --arch with small test distros: the names, the refusals, what the hook gets, and the
/// checker's ELF machine test. The hooks are bash over busybox-static: no network.
@Suite(.requires(.busybox), .tags(.busybox)) struct ArchitectureBuildTests {
    let distros: String
    let work: String

    init() throws {
        distros = try TestDistros.make([
            // Kata's ubuntu hook reads DEB_ARCH; this one writes what it got into the tree.
            "katastyle": (TestDistros.busyboxConfig, #"""
            build_rootfs() {
                mkdir -p "$1/etc" "$1/bin"
                printf '%s %s\n' "$ARCH" "$DEB_ARCH" > "$1/etc/arch-seen"
                cp "$(command -v busybox)" "$1/bin/busybox"
            }
            """#),
            "bb": (TestDistros.busyboxConfig, TestDistros.busyboxLib),
            "noarm": (TestDistros.busyboxConfig + "\nARCH_EXCLUDE_LIST=\"aarch64 ppc64le\"", TestDistros.busyboxLib),
        ])
        work = try Fixtures.temporaryDirectory("arch")
    }

    func rootfs(_ args: [String], env: [String: String] = [:]) async throws -> Fixtures.CLIResult {
        try await Fixtures.rootfs([args[0], "--distros-dir", distros] + args.dropFirst(), environment: env, workingDirectory: work)
    }

    /// A file that starts like an ELF executable of `machine` (little-endian, 64-bit): enough
    /// for the agent checks, which read the header and never run it.
    func fakeELF(machine: UInt16, name: String) throws -> String {
        var header = [UInt8](repeating: 0, count: 64)
        header[0..<4] = [0x7f, 0x45, 0x4c, 0x46]
        header[4] = 2; header[5] = 1; header[6] = 1
        header[16] = 2  // ET_EXEC
        header[18] = UInt8(machine & 0xff); header[19] = UInt8(machine >> 8)
        let path = work + "/" + name
        try Data(header).write(to: URL(fileURLWithPath: path))
        chmod(path, 0o755)
        return path
    }

    @Test func unknownArchitectureListsTheKnownOnes() async throws {
        let r = try await rootfs(["build", "bb", "--arch", "sparc64", "--agent-init", "--initrd", work + "/x.initrd"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("sparc64"))
        for known in ["x86_64", "aarch64", "s390x", "ppc64le"] { #expect(r.stderr.contains(known), "\(r.stderr)") }
        let env = try await rootfs(["build", "bb", "--agent-init", "--initrd", work + "/x.initrd"], env: ["ARCH": "mips"])
        #expect(env.status != 0)
        #expect(env.stderr.contains("ARCH mips"), "\(env.stderr)")
        #expect(!FS.exists(work + "/x.initrd"))
    }

    @Test func anExcludedArchitectureIsRefused() async throws {
        let r = try await rootfs(["build", "noarm", "--arch", "aarch64", "--agent-init", "--initrd", work + "/x.initrd"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("ARCH_EXCLUDE_LIST"), "\(r.stderr)")
        #expect(r.stderr.contains("aarch64"))
        #expect(!FS.exists(work + "/x.initrd"))
    }

    @Test func anAgentForAnotherArchitectureIsRefusedNamingBoth() async throws {
        // busybox-static is an x86_64 (the host's) ELF executable.
        let r = try await rootfs(["build", "bb", "--arch", "aarch64", "--agent", "/bin/busybox", "--agent-init",
                                  "--initrd", work + "/x.initrd"])
        #expect(r.status != 0)
        let host = hostArchitecture()
        #expect(r.stderr.contains("--agent /bin/busybox is an ELF executable for \(host)"), "\(r.stderr)")
        #expect(r.stderr.contains("for aarch64"))
        // Refused while planning: the hook never ran, nothing was written.
        #expect(!r.stderr.contains("populating"))
        #expect(!FS.exists(work + "/x.initrd"))
    }

    @Test func theCheckerRefusesAnInitForAnotherArchitecture() async throws {
        // The agent says aarch64; the hook's /bin/busybox (the host's) becomes /sbin/init through a link.
        let agent = try fakeELF(machine: Architecture.aarch64.elfMachine, name: "fake-agent")
        let lib = TestDistros.busyboxLib.replacingOccurrences(of: "printf 'NAME=busybox",
                                                               with: "mkdir -p \"$root/sbin\"; ln -s /bin/busybox \"$root/sbin/init\"; printf 'NAME=busybox")
        let dir = try TestDistros.make(["initbb": (TestDistros.busyboxConfig.replacingOccurrences(of: "INIT_PROCESS=agent", with: "INIT_PROCESS=systemd"), lib)])
        defer { FS.remove(dir) }
        let r = try await Fixtures.rootfs(["build", "--distros-dir", dir, "initbb", "--arch", "aarch64", "--agent", agent,
                                           "--initrd", work + "/x.initrd"], workingDirectory: work)
        #expect(r.status != 0)
        #expect(r.stderr.contains("/sbin/init is an ELF executable for \(hostArchitecture()), but the rootfs is for aarch64"), "\(r.stderr)")
        #expect(!FS.exists(work + "/x.initrd"))
    }

    @Test func aKataStyleHookGetsARCHAndDEB_ARCH() async throws {
        // --rootfs-only: the tree alone, so no agent for aarch64 is needed.
        let tree = work + "/tree"
        let r = try await rootfs(["build", "katastyle", "--arch", "aarch64", "--rootfs-only", "-r", tree, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let seen = try String(contentsOfFile: tree + "/etc/arch-seen", encoding: .utf8)
        #expect(seen == "aarch64 arm64\n")
        #expect(r.stdout.contains("\"architecture\" : \"aarch64\"") || r.stdout.contains("\"architecture\":\"aarch64\""), "\(r.stdout)")
        let record = try String(contentsOfFile: tree + "/var/lib/osbuilder/osbuilder.yaml", encoding: .utf8)
        #expect(record.contains("architecture: \"aarch64\""), "\(record)")
        // ppc64le's Debian name differs from Kata's.
        let ppc = try await rootfs(["build", "katastyle", "--dry-run"], env: ["ARCH": "ppc64le"])
        #expect(ppc.stdout.contains("architecture: ppc64le"), "\(ppc.stdout)")
        #expect(ppc.stdout.contains("DEB_ARCH=ppc64el"), "\(ppc.stdout)")
    }

    @Test func theDryRunSaysHowForeignBinariesRun() async throws {
        let r = try await rootfs(["build", "bb", "--arch", "aarch64", "--dry-run"])
        #expect(r.stdout.contains("emulation: aarch64 binaries run through qemu-user (/proc/sys/fs/binfmt_misc/qemu-aarch64)"), "\(r.stdout)")
        // The host's own architecture needs no emulator.
        let native = try await rootfs(["build", "bb", "--arch", hostArchitecture(), "--dry-run"])
        #expect(!native.stdout.contains("emulation:"), "\(native.stdout)")
    }

    @Test func noReferenceAgentForAnArchitectureNamesAgent() async throws {
        let r = try await rootfs(["build", "bb", "--arch", "s390x", "--agent-init", "--initrd", work + "/x.initrd"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("rootfs-agent-s390x"), "\(r.stderr)")
        #expect(r.stderr.contains("--agent"))
        #expect(!r.stderr.contains("populating"))
    }

    @Test func elfMachineReadsBothByteOrders() throws {
        let little = try fakeELF(machine: 183, name: "le")
        #expect(ELF.machine(little) == Architecture.aarch64.elfMachine)
        var big = [UInt8](repeating: 0, count: 20)
        big[0..<4] = [0x7f, 0x45, 0x4c, 0x46]; big[5] = 2; big[18] = 0; big[19] = 22
        #expect(ELF.machine(header: big).flatMap(Architecture.init(elfMachine:)) == .s390x)
        #expect(ELF.machine("/bin/busybox").flatMap(Architecture.init(elfMachine:))?.rawValue == hostArchitecture())
    }
}

/// fedora --arch aarch64 on this host: dnf --forcearch against a local repository that holds
/// a noarch and an aarch64 RPM (real rpmbuild --target, createrepo_c, dnf --installroot).
@Suite(.requires(.root, .dnf, .foreignArch), .tags(.root, .dnf, .foreignArch)) struct FedoraForeignArchTestsRequiringDNF {
    @Test func fedoraForAArch64InstallsANoarchAndAnAArch64RPM() async throws {
        let dir = try Fixtures.temporaryDirectory("fedora-aarch64")
        defer { FS.remove(dir) }
        try FS.makeDirectories(dir + "/repo")
        for (name, arch) in [("rootfs-any", "noarch"), ("rootfs-arm", "aarch64")] {
            try Catalog.write("""
            Name: \(name)
            Version: 1.0
            Release: 1
            Summary: rootfs --arch test package
            License: MIT
            \(arch == "noarch" ? "BuildArch: noarch" : "")
            %description
            A file for the rootfs --arch test.
            %install
            mkdir -p %{buildroot}/usr/share/\(name)
            echo '\(arch)' > %{buildroot}/usr/share/\(name)/arch.txt
            %files
            /usr/share/\(name)/arch.txt

            """, to: dir + "/\(name).spec")
            try await Catalog.run("rpmbuild", ["-bb", "--target", arch, "--define", "_topdir \(dir)/rpmbuild", dir + "/\(name).spec"])
            try FileManager.default.copyItem(atPath: dir + "/rpmbuild/RPMS/\(arch)/\(name)-1.0-1.\(arch).rpm",
                                             toPath: dir + "/repo/\(name)-1.0-1.\(arch).rpm")
        }
        try await Catalog.run("createrepo_c", ["-q", dir + "/repo"])
        let rootfs = dir + "/rootfs"
        let r = try await Fixtures.rootfs(["build", "fedora", "--arch", "aarch64", "--rootfs-only", "-r", rootfs],
                                          environment: ["REPO_URL": "file://\(dir)/repo", "PACKAGES": "rootfs-any rootfs-arm",
                                                        "GPG_KEY_URL": ""],
                                          workingDirectory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        let q = try await Catalog.run("rpm", ["--root", rootfs, "--dbpath", "/usr/lib/sysimage/rpm", "-qa", "--qf", "%{NAME}.%{ARCH}\\n"])
        #expect(Set(q.standardOutput.split(separator: "\n").map(String.init)) == ["rootfs-any.noarch", "rootfs-arm.aarch64"])
        #expect(try String(contentsOfFile: rootfs + "/usr/share/rootfs-arm/arch.txt", encoding: .utf8) == "aarch64\n")
    }
}

/// What a host without qemu-user or binfmt_misc is told (the checks read the files the real
/// set-up reads, here in a temporary directory standing in for /proc/sys/fs/binfmt_misc and
/// /usr/share/binfmts).
@Suite struct ForeignEmulationTests {
    @Test func eachMissingPieceIsNamed() throws {
        let dir = try Fixtures.temporaryDirectory("binfmt")
        defer { FS.remove(dir) }
        let foreign: Architecture = Architecture.host == .aarch64 ? .x86_64 : .aarch64
        let entry = "qemu-" + foreign.rawValue
        // No binfmt_misc in the kernel at all.
        let noKernel = try #require(ForeignEmulation.plan(for: foreign, binfmtDirectory: dir + "/none", formats: dir + "/formats"))
        #expect(noKernel.missing?.message.contains("needs binfmt_misc") == true, "\(String(describing: noKernel.missing))")
        // binfmt_misc there but not mounted, and qemu-user-static not installed.
        try FS.makeDirectories(dir + "/binfmt")
        try FS.makeDirectories(dir + "/formats")
        let noPackage = try #require(ForeignEmulation.plan(for: foreign, binfmtDirectory: dir + "/binfmt", formats: dir + "/formats"))
        #expect(noPackage.missing?.message.contains("package qemu-user-static is not installed") == true)
        #expect(noPackage.missing?.hint?.contains("qemu-user-static binfmt-support") == true)
        #expect(noPackage.actions.first?.hasPrefix("mount -t binfmt_misc") == true)
        // The emulator's format is there, update-binfmts is not (binfmt-support).
        try "package qemu-user-static\n".write(toFile: dir + "/formats/" + entry, atomically: true, encoding: .utf8)
        let noTool = try #require(ForeignEmulation.plan(for: foreign, environment: ["PATH": dir + "/empty"],
                                                        binfmtDirectory: dir + "/binfmt", formats: dir + "/formats"))
        #expect(noTool.missing?.message.contains("package binfmt-support is not installed") == true, "\(String(describing: noTool.missing))")
        // Mounted and enabled: nothing to do, nothing missing.
        try "enabled\n".write(toFile: dir + "/binfmt/status", atomically: true, encoding: .utf8)
        try "enabled\ninterpreter /usr/libexec/qemu-binfmt/x\n".write(toFile: dir + "/binfmt/" + entry, atomically: true, encoding: .utf8)
        let ready = try #require(ForeignEmulation.plan(for: foreign, binfmtDirectory: dir + "/binfmt", formats: dir + "/formats"))
        #expect(ready.missing == nil)
        #expect(ready.actions.isEmpty)
        // Registered but disabled: it will be enabled, not re-registered.
        try "disabled\n".write(toFile: dir + "/binfmt/" + entry, atomically: true, encoding: .utf8)
        let disabled = try #require(ForeignEmulation.plan(for: foreign, binfmtDirectory: dir + "/binfmt", formats: dir + "/formats"))
        #expect(disabled.actions == ["update-binfmts --enable \(entry)"])
        // The host's own architecture needs none of it.
        if let host = Architecture.host { #expect(ForeignEmulation.plan(for: host) == nil) }
    }
}
