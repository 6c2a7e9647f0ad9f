import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// Every bootable format, written from the real Debian tree (root, network:
/// mmdebstrap) with `rootfs image` and booted with the real `rootfs boot`
/// under QEMU (TCG here; OVMF for the UKI), plus the lcow distro's kernel+initrd, VHD and VHDX.
/// Each test prints its time to readiness so that regressions show.
@Suite(.serialized, .requires(.root, .network, .qemu, .busybox), .tags(.root, .network, .qemu, .busybox)) struct FormatBootTestsRequiringQEMUAndNetwork {
    struct Case: Sendable, CustomTestStringConvertible {
        var name: String
        /// `rootfs image` arguments after TREE (DIR is the output directory, KERNEL the test kernel).
        var write: [String]
        /// The file `rootfs boot` gets.
        var boot: String
        /// Boot with the test kernel (no: an ISO brings its own, a bundle finds NAME-kernel).
        var passKernel = true
        var erofs = false
        /// A file system the test kernel has as a module (xfs): the stage-1 initrd loads it.
        var moduleFilesystem: String?
        /// The guest's root: its block device (from /sys/dev/block, "none" for an initramfs), type and rw/ro.
        var root: String?
        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(name: "iso-bios", write: ["-o", "DIR/debian.iso", "--kernel", "KERNEL"], boot: "DIR/debian.iso", passKernel: false),
        Case(name: "raw bare ext4", write: ["-o", "DIR/bare.img", "--no-partition-table"], boot: "DIR/bare.img",
             root: "root: nvme0n1 ext4 rw"),
        Case(name: "raw GPT", write: ["-o", "DIR/gpt.img", "--partition-table", "gpt"], boot: "DIR/gpt.img",
             root: "root: nvme0n1p1 ext4 rw"),
        Case(name: "vhd", write: ["-o", "DIR/debian.vhd"], boot: "DIR/debian.vhd", root: "root: nvme0n1p1 ext4 rw"),
        Case(name: "qcow2", write: ["-o", "DIR/debian.qcow2"], boot: "DIR/debian.qcow2", root: "root: nvme0n1p1 ext4 rw"),
        Case(name: "vmdk", write: ["-o", "DIR/debian.vmdk"], boot: "DIR/debian.vmdk", root: "root: nvme0n1p1 ext4 rw"),
        Case(name: "erofs (bare)", write: ["-o", "DIR/debian.erofs"], boot: "DIR/debian.erofs", erofs: true,
             root: "root: nvme0n1 erofs ro"),
        // lz4hc above is the default (Kata's); lz4 is the other compressor. xfs: mkfs.xfs from our protofile.
        Case(name: "erofs lz4 (bare)", write: ["-o", "DIR/lz4.erofs", "--erofs-compression", "lz4"], boot: "DIR/lz4.erofs", erofs: true,
             root: "root: nvme0n1 erofs ro"),
        Case(name: "raw xfs", write: ["-o", "DIR/xfs.img", "--fs", "xfs"], boot: "DIR/xfs.img", moduleFilesystem: "xfs",
             root: "root: nvme0n1p1 xfs rw"),
        Case(name: "kernel+initrd", write: ["-o", "DIR/debian", "--format", "kernel+initrd", "--kernel", "KERNEL"],
             boot: "DIR/debian-initrd.img", passKernel: false, root: "root: none rootfs rw"),
        Case(name: "vhdx", write: ["-o", "DIR/debian.vhdx"], boot: "DIR/debian.vhdx", root: "root: nvme0n1p1 ext4 rw"),
        // Under OVMF: the UKI brings kernel and initrd (the tree), rootfs boot's command line replaces its .cmdline.
        Case(name: "uki", write: ["-o", "DIR/debian.efi", "--kernel", "KERNEL"], boot: "DIR/debian.efi", passKernel: false,
             root: "root: none rootfs rw"),
    ]

    @Test(arguments: cases) func bootsWithRootfsBoot(_ c: Case) async throws {
        let env = try await BootEnvironment.shared.prepare()
        let tree = try await Fixtures.debian.tree(agentInit: true)
        let dir = try Fixtures.temporaryDirectory("fmtboot"); defer { FS.remove(dir) }
        func fill(_ s: String) -> String { s.replacingOccurrences(of: "DIR", with: dir).replacingOccurrences(of: "KERNEL", with: env.kernel) }
        let written = try await Fixtures.rootfs(["image", tree.directory] + c.write.map(fill), environment: ["SOURCE_DATE_EPOCH": "1700000000"])
        try #require(written.status == 0, "rootfs image (\(c.name)): \(written.stderr)")

        var args = ["boot", fill(c.boot), "--timeout", "180"]
        if c.passKernel { args += ["--kernel", env.kernel] }
        if c.erofs, let stage1 = try await env.erofsStage1() { args += ["--initrd", stage1] }
        if let fs = c.moduleFilesystem, let stage1 = try await env.stage1(loading: fs) { args += ["--initrd", stage1] }
        if c.name == "iso-bios" {
            // The ISO's command line is fixed: booting it proves it reaches the agent, then the guest is stopped.
            let r = try await Fixtures.rootfs(args)
            #expect(r.status == 0, "\(r.stderr)")
            #expect(r.stderr.contains("booting the ISO"), "\(r.stderr)")
            #expect(r.stderr.contains("guest stopped"), "\(r.stderr)")
            report(c.name, r.stderr)
            // ...and a command cannot be passed: a clear error, not a hang.
            let refused = try await Fixtures.rootfs(args + ["--", "true"])
            #expect(refused.status != 0 && refused.stderr.contains("command line it was written with"), "\(refused.stderr)")
            return
        }
        let script = """
            grep '^ID=' /etc/os-release
            set -- $(grep ' / ' /proc/mounts)
            dev=$(readlink /sys/dev/block/$(stat -c %Hd:%Ld /) || echo none)
            echo "root: ${dev##*/} $3 ${4%%,*}"
            exit 3
            """
        let r = try await Fixtures.rootfs(args + ["--", "sh", "-c", script])
        #expect(r.status == 3, "\(c.name): \(r.stderr)")
        #expect(r.stdout.contains("ID=debian"), "\(c.name): \(r.stdout) \(r.stderr)")
        if let root = c.root { #expect(r.stdout.contains(root), "\(c.name): \(r.stdout)") }
        report(c.name, r.stderr)
    }

    @Test func lcowKernelInitrdBootsAndRunsRunc() async throws {
        let lcow = try await BootEnvironment.shared.lcow()
        // The layout of LCOW's utility VM, read back from the initrd.
        let entries = Set(try ArchiveReader.list(lcow.initrd).map { $0.path.hasPrefix("./") ? String($0.path.dropFirst(2)) : $0.path })
        for path in ["init", "bin", "sbin", "lib", "lib64", "usr/bin/busybox", "usr/sbin/runc", "usr/sbin/udhcpc_config.script",
                     "usr/bin/sh", "usr/bin/ip", "usr/bin/mkfs.ext4", "usr/bin/rootfs-agent", "usr/sbin/init",
                     "usr/lib/x86_64-linux-gnu/libext2fs.so.2", "usr/lib/x86_64-linux-gnu/libseccomp.so.2"] {
            #expect(entries.contains(path), "missing \(path) in the lcow initrd")
        }
        #expect(!entries.contains { $0.hasPrefix("usr/share/doc/") || $0.hasPrefix("var/lib/dpkg/") || $0.contains("systemd/systemd") })
        // No --kernel: NAME-kernel and NAME-cmdline are found next to NAME-initrd.img.
        let r = try await Fixtures.rootfs(["boot", lcow.initrd, "--timeout", "180", "--",
                                           "sh", "-c", "cat /etc/os-release; runc --version; readlink /proc/1/exe; cat /proc/cmdline"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("runc version"), "\(r.stdout)")
        #expect(r.stdout.contains("Debian GNU/Linux"), "\(r.stdout)")
        #expect(r.stdout.contains("/usr/bin/rootfs-agent"), "PID 1 is the agent (exec'd by /init): \(r.stdout)")
        report("lcow kernel+initrd", r.stderr)
    }

    @Test func lcowVHDBootsAndRunsRunc() async throws {
        let env = try await BootEnvironment.shared.prepare()
        let lcow = try await BootEnvironment.shared.lcow()
        let r = try await Fixtures.rootfs(["boot", lcow.vhd, "--kernel", env.kernel, "--timeout", "180", "--", "runc", "--version"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("runc version"), "\(r.stdout)")
        #expect(r.stderr.contains("VHD"), "\(r.stderr)")
        report("lcow vhd", r.stderr)
    }

    /// LCOW's "VHD: a VHDx file": the same disk as a dynamic VHDX, known by content.
    @Test func lcowVHDXBootsAndRunsRunc() async throws {
        let env = try await BootEnvironment.shared.prepare()
        let lcow = try await BootEnvironment.shared.lcow()
        let check = try await Fixtures.run("/usr/bin/qemu-img", ["check", "-f", "vhdx", lcow.vhdx])
        #expect(check.status == 0, "\(check.stdout)\(check.stderr)")
        let r = try await Fixtures.rootfs(["boot", lcow.vhdx, "--kernel", env.kernel, "--timeout", "180", "--", "runc", "--version"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("runc version"), "\(r.stdout)")
        #expect(r.stderr.contains("VHDX holding"), "\(r.stderr)")
        report("lcow vhdx", r.stderr)
    }

    func report(_ name: String, _ stderr: String) {
        let ready = stderr.split(separator: "\n").first { $0.contains("ready in") }.map(String.init) ?? "no ready line"
        print("FormatBootTestsRequiringQEMUAndNetwork: \(name): \(ready)")
    }
}

/// The test kernel, the erofs stage-1 initrd and the lcow build, made once per test process.
actor BootEnvironment {
    static let shared = BootEnvironment()

    struct Prepared: Sendable {
        var kernel: String
        var work: String

        /// A kernel whose erofs is a module cannot mount an erofs root by itself: a
        /// small initramfs (busybox, the kernel's own libcrc32c.ko and erofs.ko) loads
        /// it, mounts root= (read-only unless `rw` is on the command line) and switches to it.
        /// nil when erofs is built in.
        func erofsStage1() async throws -> String? { try await stage1(loading: "erofs") }

        /// The same for any file system module whose only dependency is libcrc32c (erofs, xfs).
        func stage1(loading filesystem: String) async throws -> String? {
            let boot = FS.parent(kernel)
            let name = FS.basename(kernel)
            guard name.hasPrefix("vmlinuz-") else { return nil }
            let version = String(name.dropFirst("vmlinuz-".count))
            let config = (try? String(contentsOfFile: boot + "/config-" + version, encoding: .utf8)) ?? ""
            if config.isEmpty || config.contains("\nCONFIG_\(filesystem.uppercased())_FS=y") { return nil }
            let modules = FS.parent(boot) + "/lib/modules/" + version + "/kernel"
            let needed = [modules + "/lib/libcrc32c.ko", modules + "/fs/\(filesystem)/\(filesystem).ko"]
            for m in needed where !FS.isRegularFile(m) {
                throw RootfsError("the test kernel has \(filesystem) as a module, and \(m) is missing",
                                  hint: "use the kernel scripts/fetch-test-kernel.sh unpacks (it keeps lib/modules)")
            }
            let output = work + "/stage1-\(filesystem).img"
            if FS.isRegularFile(output) { return output }
            let root = work + "/stage1-\(filesystem)"
            FS.remove(root)
            try FS.makeDirectories(root + "/bin")
            try FS.makeDirectories(root + "/modules")
            try FS.copyFile("/bin/busybox", to: root + "/bin/busybox", mode: 0o755)
            for (i, m) in needed.enumerated() { try FS.copyFile(m, to: root + "/modules/\(i)-\(FS.basename(m))") }
            let script = """
            #!/bin/busybox sh
            # Stage 1: load the root file system's modules, mount root= read-only, switch to it.
            b=/bin/busybox
            $b mkdir -p /proc /dev /newroot
            $b mount -t proc proc /proc
            $b mount -t devtmpfs devtmpfs /dev
            for m in /modules/*.ko; do $b insmod "$m" || echo "stage1: insmod $m failed"; done
            root=; fstype=; mode=ro
            for p in $($b cat /proc/cmdline); do
                case "$p" in root=*) root=${p#root=} ;; rootfstype=*) fstype=${p#rootfstype=} ;; rw) mode=rw ;; esac
            done
            n=0
            while [ ! -b "$root" ] && [ $n -lt 100 ]; do $b sleep 0.1; n=$((n + 1)); done
            $b mount -t "$fstype" -o "$mode" "$root" /newroot || { echo "stage1: cannot mount $root"; exit 1; }
            $b umount /proc
            $b mount --move /dev /newroot/dev
            exec $b switch_root /newroot /sbin/init

            """
            try script.write(toFile: root + "/init", atomically: false, encoding: .utf8)
            chmod(root + "/init", 0o755)
            try InitrdWriter(compression: .gzip, epoch: nil).write(tree: root, to: output)
            return output
        }
    }

    struct Lcow: Sendable {
        var initrd: String
        var vhd: String
        var vhdx: String
    }

    private var prepared: Task<Prepared, any Error>?
    private var lcowBuild: Task<Lcow, any Error>?

    func prepare() async throws -> Prepared {
        if let prepared { return try await prepared.value }
        let task = Task<Prepared, any Error> {
            guard FileManager.default.isExecutableFile(atPath: "/bin/busybox") else {
                throw RootfsError("/bin/busybox is missing", hint: "apt-get install busybox-static")
            }
            let kernel = try await BootFixture.kernel(packageRoot: URL(fileURLWithPath: Fixtures.repositoryRoot))
            // Under the (git-ignored) .build-tests/ of the package; each run replaces the last one's.
            let work = Fixtures.repositoryRoot + "/.build-tests/format-boot"
            FS.remove(work)
            try FS.makeDirectories(work)
            return Prepared(kernel: kernel, work: work)
        }
        prepared = task
        return try await task.value
    }

    /// `rootfs build lcow --format kernel+initrd --format vhd --kernel K` (a real build from Debian's mirror).
    func lcow() async throws -> Lcow {
        if let lcowBuild { return try await lcowBuild.value }
        let env = try await prepare()
        let task = Task<Lcow, any Error> {
            let dir = env.work + "/lcow"
            try FS.makeDirectories(dir)
            let r = try await Fixtures.rootfs(["build", "lcow", "--format", "kernel+initrd", "--format", "vhd", "--format", "vhdx",
                                               "--kernel", env.kernel, "-O", dir + "/out"],
                                              environment: ["SOURCE_DATE_EPOCH": "1700000000"], workingDirectory: dir)
            guard r.status == 0 else { throw RootfsError("rootfs build lcow failed (\(r.status)): \(r.stderr.suffix(3000))") }
            return Lcow(initrd: dir + "/out/lcow-initrd.img", vhd: dir + "/out/lcow.vhd", vhdx: dir + "/out/lcow.vhdx")
        }
        lcowBuild = task
        return try await task.value
    }
}
