import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// `rootfs boot --kata --kata-root pmem` before QEMU starts: the devices and parameters it gives
/// QEMU, and the images it refuses (the boots themselves are in KataDebianTestsRequiringQEMUAndNetwork).
@Suite(.requires(.qemu, .qemuImg), .tags(.qemu, .qemuImg)) struct KataNVDIMMArgumentTests {
    @Test func pmemAttachesTheRawImageReadOnlyWithKatasRootParameters() async throws {
        let tree = try AlignedAndDAXImageTests.agentTree()
        let dir = try Fixtures.temporaryDirectory("nvdimm-args")
        defer { FS.remove(tree); FS.remove(dir) }
        for (name, dax) in [("dax.img", ["--dax"]), ("plain.img", [])] {
            let r = try await Fixtures.rootfs(["image", tree, "-o", dir + "/" + name, "--agent-init"] + dax)
            #expect(r.status == 0, "\(r.stderr)")
        }
        for (name, flags) in [("dax.img", "rootflags=dax,data=ordered,errors=remount-ro ro"), ("plain.img", "rootflags=data=ordered,errors=remount-ro ro")] {
            let image = dir + "/" + name
            var options = BootOptions(image: image, kernel: "/k", command: ["true"])
            options.kata = KataBoot.forImage(image, root: .pmem)
            let kind = try await BootImageKind.detect(path: image)
            let command = try QEMUBoot(options: options).qemuCommand(kind: kind, accelerator: .tcg, consoleLog: "/c", statusLog: "/s")
            let args = command.arguments
            let bytes = FS.fileSize(image)
            #expect(args.contains("pc,nvdimm=on"))
            #expect(args.contains("memory-backend-file,id=mem0,mem-path=\(image),size=\(bytes),readonly=on"), "\(args)")
            #expect(args.contains("nvdimm,id=nv0,memdev=mem0,unarmed=on"))
            #expect(args.contains("512,slots=2,maxmem=\(512 + (bytes >> 20))M"), "\(args)")
            #expect(!args.contains("-drive") && !args.contains("-snapshot"), "\(args)")
            let line = try #require(args.firstIndex(of: "-append").map { args[$0 + 1] })
            #expect(line.contains("root=/dev/pmem0p1 \(flags) rootfstype=ext4 ro"), "\(line)")
            #expect(line.contains("systemd.unit=kata-containers.target"))
        }
    }

    @Test func pmemRefusesImagesAnNVDIMMCannotMapBeforeQEMUStarts() async throws {
        let tree = try AlignedAndDAXImageTests.agentTree()
        let dir = try Fixtures.temporaryDirectory("nvdimm-bad")
        defer { FS.remove(tree); FS.remove(dir) }
        let kernel = dir + "/vmlinuz"
        try "not a kernel".write(toFile: kernel, atomically: true, encoding: .utf8)
        let image = dir + "/x.img"
        #expect(try await Fixtures.rootfs(["image", tree, "-o", image, "--agent-init"]).status == 0)
        // QEMU maps the file itself: a qcow2 is not what the guest would see.
        let qcow2 = dir + "/x.qcow2"
        #expect(try await Fixtures.run("/usr/bin/qemu-img", ["convert", "-O", "qcow2", image, qcow2]).status == 0)
        let converted = try await Fixtures.rootfs(["boot", qcow2, "--kata", "--kata-root", "pmem", "--kernel", kernel, "--accel", "tcg", "--", "true"])
        #expect(converted.status != 0 && converted.stderr.contains("must be a raw disk image; \(qcow2) is qcow2"), "\(converted.stderr)")
        // A raw image whose size is not whole 4 KiB pages.
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: image))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(count: 512))
        try handle.close()
        let odd = try await Fixtures.rootfs(["boot", image, "--kata", "--kata-root", "pmem", "--kernel", kernel, "--accel", "tcg", "--", "true"])
        #expect(odd.status != 0 && odd.stderr.contains("not whole 4 KiB pages, which an NVDIMM needs"), "\(odd.stderr)")
        // A DAX image grown by 1 MiB: whole pages, but the driver maps only a namespace ending on 2 MiB.
        let dax = dir + "/dax.img"
        #expect(try await Fixtures.rootfs(["image", tree, "-o", dax, "--dax", "--agent-init"]).status == 0)
        #expect(truncate(dax, off_t(FS.fileSize(dax) + (1 << 20))) == 0)
        let grown = try await Fixtures.rootfs(["boot", dax, "--kata", "--kata-root", "pmem", "--kernel", kernel, "--accel", "tcg", "--", "true"])
        #expect(grown.status != 0 && grown.stderr.contains("has Kata's DAX header but is"), "\(grown.stderr)")
        let noKata = try await Fixtures.rootfs(["boot", image, "--kata-root", "pmem", "--kernel", kernel, "--", "true"])
        #expect(noKata.status != 0 && noKata.stderr.contains("--kata-root is how --kata attaches the image: add --kata"), "\(noKata.stderr)")
        let unknown = try await Fixtures.rootfs(["boot", image, "--kata", "--kata-root", "scsi", "--kernel", kernel, "--", "true"])
        #expect(unknown.status != 0 && unknown.stderr.contains("virtio-blk") && unknown.stderr.contains("pmem"), "\(unknown.stderr)")
    }
}
