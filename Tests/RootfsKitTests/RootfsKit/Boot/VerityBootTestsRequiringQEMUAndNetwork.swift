import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// `--verity` Debian disks booted with the real `rootfs boot` on Debian's cloud kernel (dm-mod and
/// dm-verity are modules there, no CONFIG_DM_INIT): the stage-1 initrd maps the root with
/// `rootfs-agent dm-create` from Kata's dm-mod.create parameter. One image per tree, booted
/// several times (each TCG boot costs 20-60 s).
@Suite(.serialized, .requires(.root, .network, .qemu, .busybox, .veritysetup), .tags(.root, .network, .qemu, .busybox, .veritysetup))
struct VerityBootTestsRequiringQEMUAndNetwork {
    static let script = """
        set -- $(grep ' / ' /proc/mounts)
        dev=$(readlink /sys/dev/block/$(stat -c %Hd:%Ld /) || echo none)
        echo "root: $1 ${dev##*/} $3 ${4%%,*}"
        exit 3
        """

    @Test(arguments: [true, false]) func verityDebianBootsOnDmZeroReadOnly(agentInit: Bool) async throws {
        let env = try await BootEnvironment.shared.prepare()
        let tree = try await Fixtures.debian.tree(agentInit: agentInit)
        let dir = try Fixtures.temporaryDirectory("verity-boot"); defer { FS.remove(dir) }
        let image = dir + "/debian.img"
        let written = try await Fixtures.rootfs(["image", tree.directory, "--verity", "-o", image] + (agentInit ? ["--agent-init"] : []),
                                                environment: ["SOURCE_DATE_EPOCH": "1700000000"])
        try #require(written.status == 0, "\(written.stderr)")
        let r = try await Fixtures.rootfs(["boot", image, "--kernel", env.kernel, "--timeout", "240", "--", "sh", "-c", Self.script])
        #expect(r.status == 3, "\(r.stderr)")
        #expect(r.stdout.contains("root: /dev/dm-0 dm-0 ext4 ro"), "root on the verity mapping, read-only: \(r.stdout) \(r.stderr.suffix(2000))")
        #expect(r.stderr.contains("verity disk: root hash"), "\(r.stderr)")
        print("VerityBootTests: agentInit=\(agentInit): \(r.stderr.split(separator: "\n").first { $0.contains("ready in") } ?? "no ready line")")
        guard agentInit else { return }
        // As Kata's runtime boots it: virtio-blk, dm-mod.create over /dev/vda1 and /dev/vda2.
        let kata = try await Fixtures.rootfs(["boot", image, "--kata", "--kernel", env.kernel, "--timeout", "240", "--", "sh", "-c", Self.script])
        #expect(kata.status == 3 && kata.stdout.contains("root: /dev/dm-0 dm-0 ext4 ro"), "--kata: \(kata.stdout) \(kata.stderr.suffix(2000))")

        // erofs + verity, as every measured Kata release image is (the stage-1 loads erofs.ko too).
        try FS.makeDirectories(dir + "/erofs")
        let erofs = try await Fixtures.rootfs(["image", tree.directory, "--verity", "--fs", "erofs", "--agent-init", "-o", dir + "/erofs/e.img"],
                                              environment: ["SOURCE_DATE_EPOCH": "1700000000"])
        try #require(erofs.status == 0, "\(erofs.stderr)")
        let e = try await Fixtures.rootfs(["boot", dir + "/erofs/e.img", "--kernel", env.kernel, "--timeout", "240", "--", "sh", "-c", Self.script])
        #expect(e.status == 3 && e.stdout.contains("root: /dev/dm-0 dm-0 erofs ro"), "erofs: \(e.stdout) \(e.stderr.suffix(2000))")

        // One data block changed after the build (the file system's first block: its superblock):
        // the guest's dm-verity refuses it and rootfs boot says so.
        let fd = open(image, O_RDWR)
        try #require(fd >= 0)
        var byte: UInt8 = 0
        _ = pread(fd, &byte, 1, 1 << 20 + 1024 + 100)
        byte ^= 0x20
        _ = pwrite(fd, &byte, 1, 1 << 20 + 1024 + 100)
        close(fd)
        let flipped = try await Fixtures.rootfs(["boot", image, "--kernel", env.kernel, "--timeout", "240", "--", "true"])
        #expect(flipped.status != 0, "\(flipped.stderr)")
        #expect(flipped.stderr.contains("dm-verity refused a block"), "a clear verity error: \(flipped.stderr.suffix(3000))")
    }
}
