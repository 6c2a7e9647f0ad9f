import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// Inputs of the Kata profile written by the tests (the agent tarball, the policy,
/// a KERNEL_MODULES_DIR cut from the test kernel's package).
enum KataInputs {
    /// A tar of `files` (guest path: host file), made with the host's tar (creating only; rootfs unpacks it).
    static func tarball(_ files: [String: String], at path: String) async throws {
        let stage = try Fixtures.temporaryDirectory("kata-tar")
        for (guest, host) in files {
            try FS.makeDirectories(FS.parent(stage + "/" + guest))
            try FileManager.default.copyItem(atPath: host, toPath: stage + "/" + guest)
        }
        let result = try await Fixtures.run("/usr/bin/tar", ["-C", stage, "-cf", path, "."])
        guard result.status == 0 else { throw RootfsError("tar failed: \(result.stderr)") }
    }

    /// lib/modules/<kver> holding only `module` (virtio_blk by default) from the test kernel's package,
    /// its modules.order and modules.builtin: a real kernel's module directory, small. `name` renames the directory.
    static func modules(name: String? = nil, order: Bool = true,
                        module: String = "kernel/drivers/block/virtio_blk.ko") async throws -> (dir: String, version: String) {
        let kernel = try await BootFixture.kernel(packageRoot: URL(fileURLWithPath: Fixtures.repositoryRoot))
        let version = String(FS.basename(kernel).dropFirst("vmlinuz-".count))
        let package = FS.parent(FS.parent(kernel)) + "/lib/modules/" + version
        let dir = try Fixtures.temporaryDirectory("kata-modules") + "/" + (name ?? version)
        try FS.makeDirectories(dir + "/" + module.split(separator: "/").dropLast().joined(separator: "/"))
        let found = [module, module + ".xz"].first { FS.isRegularFile(package + "/" + $0) }
        guard let found else { throw RootfsError("the test kernel's package has no \(module) under \(package)") }
        try FileManager.default.copyItem(atPath: package + "/" + found, toPath: dir + "/" + found)
        if order { try (found + "\n").write(toFile: dir + "/modules.order", atomically: true, encoding: .utf8) }
        try FileManager.default.copyItem(atPath: package + "/modules.builtin", toPath: dir + "/modules.builtin")
        return (dir, version)
    }

    /// The module the Kata Debian guest gets from KERNEL_MODULES_DIR and loads after boot.
    static let guestModule = "kernel/drivers/net/dummy.ko"

    static func busyboxDistros() throws -> String { try TestDistros.make(["bb": (TestDistros.busyboxConfig, TestDistros.busyboxLib)]) }
}

/// The Kata profile on a busybox guest (no network, no boot): AGENT_TARBALL, the policy, the
/// tarballs, KERNEL_MODULES_DIR with depmod, ROOTFS_ONLY, and the inputs it refuses.
@Suite(.serialized, .requires(.root, .busybox), .tags(.root, .busybox)) struct KataProfileTests {
    @Test func kataWithAgentInitSaysWhatConflicts() async throws {
        let distros = try KataInputs.busyboxDistros()
        let out = try Fixtures.temporaryDirectory("kata")
        let r = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "-r", out + "/rootfs", "--kata", "--agent-init"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("--kata conflicts with --agent-init"))
        #expect(r.stderr.contains("kata-containers.target"))
        #expect(!FS.exists(out + "/rootfs"))
    }

    @Test func missingOrNonTarAgentTarballIsAClearError() async throws {
        let distros = try KataInputs.busyboxDistros()
        let out = try Fixtures.temporaryDirectory("kata")
        let missing = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "-r", out + "/a"],
                                                environment: ["AGENT_TARBALL": out + "/nope.tar.zst"])
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("AGENT_TARBALL \(out)/nope.tar.zst: no such file"))
        let text = out + "/agent.tar.zst"
        try "not a tar\n".write(toFile: text, atomically: true, encoding: .utf8)
        let notTar = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "-r", out + "/b"],
                                               environment: ["AGENT_TARBALL": text])
        #expect(notTar.status != 0)
        #expect(notTar.stderr.contains("AGENT_TARBALL \(text) is not a tar archive"))
        let both = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "-r", out + "/c", "--agent", Fixtures.agentBinary],
                                             environment: ["AGENT_TARBALL": text])
        #expect(both.status != 0)
        #expect(both.stderr.contains("AGENT_TARBALL and --agent both give the agent"))
    }

    @Test func kernelModulesDirWithoutOrderOrWithAnotherVersionIsRefused() async throws {
        let distros = try KataInputs.busyboxDistros()
        let out = try Fixtures.temporaryDirectory("kata")
        let noOrder = try await KataInputs.modules(order: false)
        // AGENT_BIN=kata-agent: the profile is on (busybox's config makes the agent init, which --kata refuses).
        let r1 = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "-r", out + "/a"],
                                           environment: ["KERNEL_MODULES_DIR": noOrder.dir, "AGENT_BIN": "kata-agent"])
        #expect(r1.status != 0)
        #expect(r1.stderr.contains("has no modules.order"))
        let renamed = try await KataInputs.modules(name: "9.9.9-other")
        let r2 = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "-r", out + "/b"],
                                           environment: ["KERNEL_MODULES_DIR": renamed.dir, "AGENT_BIN": "kata-agent"])
        #expect(r2.status != 0)
        #expect(r2.stderr.contains("is named 9.9.9-other but its modules were built for kernel \(renamed.version)"))
    }

    /// AGENT_TARBALL (with its own unit), the policy, the guest hooks tarball and the kernel modules, on a
    /// guest whose config makes the agent init (the profile is on because the agent is Kata's).
    @Test func agentTarballPolicyHooksAndModulesLandInTheTree() async throws {
        let distros = try KataInputs.busyboxDistros()
        let out = try Fixtures.temporaryDirectory("kata")
        let unit = out + "/kata-agent.service"
        try "[Unit]\nDescription=from the tarball\n".write(toFile: unit, atomically: true, encoding: .utf8)
        try await KataInputs.tarball(["usr/bin/kata-agent": Fixtures.agentBinary,
                                      "usr/lib/systemd/system/kata-agent.service": unit], at: out + "/agent.tar")
        let hook = out + "/hook.json"
        try "{\"hook\": true}\n".write(toFile: hook, atomically: true, encoding: .utf8)
        try await KataInputs.tarball(["usr/share/oci/hooks/prestart/hook.json": hook], at: out + "/hooks.tar")
        let policy = out + "/allow-all.rego"
        try "package agent_policy\ndefault AllowRequestsFailingPolicy := true\n".write(toFile: policy, atomically: true, encoding: .utf8)
        let modules = try await KataInputs.modules()
        let r = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "-r", out + "/rootfs"], environment: [
            "AGENT_TARBALL": out + "/agent.tar", "GUEST_HOOKS_TARBALL": out + "/hooks.tar",
            "AGENT_POLICY": "yes", "AGENT_POLICY_FILE": policy, "KERNEL_MODULES_DIR": modules.dir,
        ])
        #expect(r.status == 0, "\(r.stderr.suffix(2000))")
        let root = out + "/rootfs"
        #expect(try SHA256.hexDigest(ofFile: root + "/usr/bin/kata-agent") == SHA256.hexDigest(ofFile: Fixtures.agentBinary))
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: root + "/sbin/init")) == "/usr/bin/kata-agent")
        #expect(try String(contentsOfFile: root + "/usr/lib/systemd/system/kata-agent.service", encoding: .utf8).contains("from the tarball"))
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: root + "/etc/kata-opa/default-policy.rego")) == "allow-all.rego")
        #expect(try String(contentsOfFile: root + "/etc/kata-opa/default-policy.rego", encoding: .utf8).contains("package agent_policy"))
        #expect(FS.isRegularFile(root + "/usr/share/oci/hooks/prestart/hook.json"))
        #expect(FS.fileSize(root + "/etc/resolv.conf") == 0 && FS.isRegularFile(root + "/etc/resolv.conf"))
        #expect(FS.fileSize(root + "/etc/machine-id") == 0 && FS.isRegularFile(root + "/etc/machine-id"))
        // depmod ran for the guest's kernel version: modules.dep names the module it was given.
        let dep = try String(contentsOfFile: root + "/lib/modules/\(modules.version)/modules.dep", encoding: .utf8)
        #expect(dep.contains("kernel/drivers/block/virtio_blk.ko"))
        #expect(FS.isRegularFile(root + "/lib/modules/\(modules.version)/modules.dep.bin"))
        // The agent is init: no systemd units are written for it.
        #expect(!FS.exists(root + "/usr/lib/systemd/system/kata-containers.target"))
    }

    /// Kata's image_builder.sh defaults under the profile: the DAX header (SKIP_DAX_HEADER=no) and
    /// 128 MiB steps (IMAGE_SIZE_ALIGNMENT_MB); the flags and the variables change them.
    @Test func kataDisksGetTheDAXHeaderAnd128MiBStepsByDefault() async throws {
        let distros = try KataInputs.busyboxDistros()
        let out = try Fixtures.temporaryDirectory("kata-dax")
        defer { FS.remove(out) }
        func plan(_ args: [String], _ env: [String: String]) async throws -> Fixtures.CLIResult {
            try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "--dry-run", "--image", out + "/p.img"] + args, environment: env)
        }
        let kata = ["AGENT_BIN": "kata-agent"]
        let cases: [([String], [String: String], String)] = [
            ([], kata, "DAX header, size in 128 MiB steps, 64 MiB free)"),
            ([], kata.merging(["SKIP_DAX_HEADER": "yes"]) { $1 }, "ext4 by native, size in 128 MiB steps, 64 MiB free)"),
            (["--skip-dax-header"], kata.merging(["IMAGE_SIZE_ALIGNMENT_MB": "64"]) { $1 }, "ext4 by native, size in 64 MiB steps, 64 MiB free)"),
            (["--align", "32"], kata.merging(["IMAGE_SIZE_ALIGNMENT_MB": "64"]) { $1 }, "DAX header, size in 32 MiB steps, 64 MiB free)"),
            // Kata's layout is MBR only: a GPT disk of a Kata guest has no header unless --dax asks (and is refused then).
            (["--partition-table", "gpt"], kata, "(raw, GPT, ext4 by native, size in 128 MiB steps, 64 MiB free)"),
            // Not a Kata guest: neither, unless asked.
            ([], [:], "(raw, MBR, ext4 by native, 64 MiB free)"),
            (["--dax"], ["IMAGE_SIZE_ALIGNMENT_MB": "16"], "DAX header, size in 16 MiB steps, 64 MiB free)"),
        ]
        for (args, env, line) in cases {
            let r = try await plan(args, env)
            #expect(r.status == 0 && r.stdout.contains(line), "\(args) \(env): \(r.stdout)\(r.stderr)")
        }
        let bad = try await plan([], kata.merging(["IMAGE_SIZE_ALIGNMENT_MB": "0"]) { $1 })
        #expect(bad.status != 0 && bad.stderr.contains("IMAGE_SIZE_ALIGNMENT_MB '0' is not an image size step in MiB"), "\(bad.stderr)")

        // A real build: the image carries the header and ends on a 128 MiB step; sfdisk reads MBR #1.
        let image = out + "/bb.img"
        let r = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "--image", image], environment: kata)
        #expect(r.status == 0, "\(r.stderr.suffix(2000))")
        #expect(FS.fileSize(image) > 0 && FS.fileSize(image) % (128 << 20) == 0, "\(FS.fileSize(image))")
        let head = try OwnedFileDescriptor(path: image, flags: O_RDONLY).read(count: DAXHeader.encodedBytes, at: 0)
        #expect(DAXHeader.infoBlock(inHead: head, what: image) != nil)
        let parts = try await AlignedAndDAXImageTests.partitions(image)
        #expect(parts.count == 1 && parts[0].start == 6144, "\(parts)")
        #expect(try await AlignedAndDAXImageTests.fsck(image, start: parts[0].start, size: parts[0].size).status == 0)
    }

    @Test func rootfsOnlyGivesTheTreeWithoutAgentAndAnErofsImage() async throws {
        let distros = try KataInputs.busyboxDistros()
        let out = try Fixtures.temporaryDirectory("kata")
        let r = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "-r", out + "/rootfs",
                                           "--format", "erofs", "-O", out], environment: ["ROOTFS_ONLY": "yes"])
        #expect(r.status == 0, "\(r.stderr.suffix(2000))")
        #expect(FS.isRegularFile(out + "/rootfs/bin/busybox"))
        #expect(!FS.exists(out + "/rootfs/usr/bin/rootfs-agent") && !FS.exists(out + "/rootfs/usr/bin/kata-agent"))
        #expect(!FS.exists(out + "/rootfs/sbin/init"))
        let erofs = out + "/bb.erofs"
        #expect(FS.isRegularFile(erofs))
        let check = try await Fixtures.run("/usr/bin/fsck.erofs", ["--extract=" + out + "/x", erofs])
        #expect(check.status == 0, "\(check.stderr)")
        #expect(FS.isRegularFile(out + "/x/bin/busybox"))
        #expect(!FS.exists(out + "/x/sbin/init"))
        let conflict = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "-r", out + "/r2", "--rootfs-only", "--kata"])
        #expect(conflict.status != 0)
        #expect(conflict.stderr.contains("--rootfs-only (ROOTFS_ONLY=yes) builds the distro tree with no agent"))
    }
}

/// A Debian guest built once with `--agent` (the reference agent under the name kata-agent).
actor KataDebianTree {
    static let shared = KataDebianTree()
    struct Tree: Sendable { var directory: String; var image: String }
    private var task: Task<Tree, any Error>?

    func tree() async throws -> Tree {
        if let task { return try await task.value }
        let task = Task<Tree, any Error> {
            let dir = try Fixtures.temporaryDirectory("kata-debian")
            // KERNEL_MODULES_DIR from the test kernel's package with dummy.ko (a module, not built in, that
            // nothing loads by itself) and kmod for modprobe; Kata's defaults give the image the DAX header.
            let modules = try await KataInputs.modules(module: KataInputs.guestModule)
            let result = try await Fixtures.rootfs(["build", "debian", "-r", dir + "/rootfs", "--image", dir + "/debian.img",
                                                    "--agent", Fixtures.agentBinary, "--extra-pkg", "kmod"],
                                                   environment: ["SOURCE_DATE_EPOCH": "1700000000", "KERNEL_MODULES_DIR": modules.dir])
            guard result.status == 0 else { throw RootfsError("kata debian build failed: \(result.stderr.suffix(3000))") }
            return Tree(directory: dir + "/rootfs", image: dir + "/debian.img")
        }
        self.task = task
        return try await task.value
    }
}

@Suite(.serialized, .requires(.root, .network, .qemu), .tags(.root, .network, .qemu)) struct KataDebianTestsRequiringQEMUAndNetwork {
    @Test func theTreeIsAKataGuest() async throws {
        let root = try await KataDebianTree.shared.tree().directory
        let target = try String(contentsOfFile: root + "/usr/lib/systemd/system/kata-containers.target", encoding: .utf8)
        for line in ["Requires=tmp.mount", "Wants=chronyd.service", "Requires=kata-agent.service", "AllowIsolate=yes"] {
            #expect(target.contains(line), "\(line)")
        }
        let unit = try String(contentsOfFile: root + "/usr/lib/systemd/system/kata-agent.service", encoding: .utf8)
        for line in ["ExecStart=/usr/bin/kata-agent", "FailureAction=poweroff", "OOMScoreAdjust=-997", "LimitNOFILE=1073741824"] {
            #expect(unit.contains(line), "\(line)")
        }
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: root + "/etc/systemd/system/basic.target.wants/kata-containers.target"))
                == "/usr/lib/systemd/system/kata-containers.target")
        #expect(!FS.exists(root + "/usr/lib/systemd/system/rootfs-guest.target"))
        #expect(FS.isRegularFile(root + "/usr/lib/systemd/system/tmp.mount") || FS.isRegularFile(root + "/etc/systemd/system/tmp.mount"))
        #expect(FS.isRegularFile(root + "/etc/resolv.conf") && FS.fileSize(root + "/etc/resolv.conf") == 0)
        #expect(FS.isRegularFile(root + "/etc/machine-id") && FS.fileSize(root + "/etc/machine-id") == 0)
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: root + "/var/tmp")) == "../tmp")
        // Kata's -d pruning: these exist in every Debian systemd and are gone.
        for pruned in ["systemd-journald.service", "systemd-journald.socket", "systemd-udevd.service", "systemd-tmpfiles-setup.service"] {
            #expect(!FS.exists(root + "/usr/lib/systemd/system/" + pruned), "\(pruned)")
        }
        #expect(!FS.exists(root + "/usr/lib/systemd/system-generators/systemd-fstab-generator"))
        // Not pruned: only Kata's names go.
        #expect(FS.isRegularFile(root + "/usr/lib/systemd/system/systemd-journald@.service"))
    }

    @Test func bootsTheWayKataBootsIt() async throws {
        let image = try await KataDebianTree.shared.tree().image
        let kernel = try await BootFixture.kernel(packageRoot: URL(fileURLWithPath: Fixtures.repositoryRoot))
        let r = try await Fixtures.rootfs(["boot", image, "--kernel", kernel, "--timeout", "240", "--accel", "tcg", "--append",
                                           KataProfile.kernelParameters.joined(separator: " "), "--",
                                           "sh", "-c", "systemctl is-active kata-containers.target kata-agent.service tmp.mount; cat /proc/1/comm"])
        #expect(r.status == 0, "\(r.stderr.suffix(3000))")
        #expect(r.stdout == "active\nactive\nactive\nsystemd\n", "\(r.stdout)")
    }

    /// Kata's image_builder.sh layout, read by other tools: 128 MiB steps, MBR #1 at 0 pointing at 3 MiB,
    /// MBR #2 at 2 MiB pointing at 1 MiB of the inner image, the same partition, which e2fsck accepts.
    @Test func theImageHasKatasDAXLayout() async throws {
        let image = try await KataDebianTree.shared.tree().image
        let size = FS.fileSize(image)
        #expect(size % (128 << 20) == 0, "\(size)")
        let outer = try await AlignedAndDAXImageTests.partitions(image)
        #expect(outer.count == 1 && outer[0].start == 6144 && (outer[0].start + outer[0].size) * 512 == size, "\(outer)")
        let inner = image + ".inner"
        defer { unlink(inner) }
        _ = try await Fixtures.run("/usr/bin/dd", ["if=" + image, "of=" + inner, "bs=1M", "skip=2", "count=4", "status=none"])
        let innerParts = try await AlignedAndDAXImageTests.partitions(inner)
        #expect(innerParts.count == 1 && innerParts[0].start == 2048 && innerParts[0].size == outer[0].size, "\(innerParts)")
        let fsck = try await AlignedAndDAXImageTests.fsck(image, start: outer[0].start, size: outer[0].size)
        #expect(fsck.status == 0, "\(fsck.stdout)\(fsck.stderr)")
    }

    /// `rootfs boot --kata --kata-root pmem`: the image as an NVDIMM (nfit and nd_pmem are modules of the test
    /// kernel, loaded by the stage-1 initrd), root on /dev/pmem0p1 mounted with dax, which the kernel allows only
    /// when it accepted the image's PFN info block. The agent runs from kata-containers.target; then the module
    /// from KERNEL_MODULES_DIR is present in the guest and modprobe loads it (it was not loaded before).
    @Test func bootKataOnNVDIMMWithDAXAndModprobe() async throws {
        let image = try await KataDebianTree.shared.tree().image
        let kernel = try await BootFixture.kernel(packageRoot: URL(fileURLWithPath: Fixtures.repositoryRoot))
        let module = KataInputs.guestModule
        let name = FS.basename(module).replacingOccurrences(of: ".ko", with: "")
        let script = """
        systemctl is-active kata-containers.target kata-agent.service
        findmnt -no SOURCE,OPTIONS /
        test -f /lib/modules/$(uname -r)/\(module) && echo present
        grep -c '^\(name) ' /proc/modules
        modprobe \(name) && grep -c '^\(name) ' /proc/modules
        """
        let r = try await Fixtures.rootfs(["boot", image, "--kata", "--kata-root", "pmem", "--kernel", kernel, "--timeout", "240",
                                           "--accel", "tcg", "--", "sh", "-c", script])
        #expect(r.status == 0, "\(r.stderr.suffix(3000))")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 6, "\(r.stdout)")
        #expect(lines.prefix(2) == ["active", "active"], "\(r.stdout)")
        let mount = lines.count > 2 ? lines[2] : ""
        #expect(mount.hasPrefix("/dev/pmem0p1 ro"), "\(r.stdout)")
        #expect(mount.split(separator: " ").last?.split(separator: ",").contains { $0.hasPrefix("dax") } == true, "\(r.stdout)")
        #expect(Array(lines.suffix(3)) == ["present", "0", "1"], "\(r.stdout)")
    }

    /// `rootfs boot --kata`: virtio-blk (a module of the test kernel, loaded by the stage-1 initrd built
    /// from the kernel's package), Kata's parameters; the agent runs from kata-containers.target.
    @Test func bootKataOnVirtioBlk() async throws {
        let image = try await KataDebianTree.shared.tree().image
        let kernel = try await BootFixture.kernel(packageRoot: URL(fileURLWithPath: Fixtures.repositoryRoot))
        let r = try await Fixtures.rootfs(["boot", image, "--kata", "--kernel", kernel, "--timeout", "240", "--accel", "tcg", "--",
                                           "sh", "-c", "systemctl is-active kata-containers.target kata-agent.service; findmnt -no SOURCE,OPTIONS /; grep -o 'systemd.unit=[^ ]*' /proc/cmdline"])
        #expect(r.status == 0, "\(r.stderr.suffix(3000))")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.prefix(2) == ["active", "active"], "\(r.stdout)")
        #expect(lines.count == 4 && lines[2].hasPrefix("/dev/vda1 ro"), "\(r.stdout)")
        #expect(lines.last == "systemd.unit=kata-containers.target", "\(r.stdout)")
    }
}
