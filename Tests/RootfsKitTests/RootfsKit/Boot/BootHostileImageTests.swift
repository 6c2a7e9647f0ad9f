import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsSupport

/// `rootfs boot` given images that point elsewhere: refused before QEMU starts.
@Suite struct BootHostileImageTests {
    /// A canary the guest must never read: the backing file a hostile qcow2 names.
    @Test func containersNamingOtherFilesAreRefused() async throws {
        let dir = try Fixtures.temporaryDirectory("boothostile"); defer { FS.remove(dir) }
        let canary = dir + "/host-secret.raw"
        try Data(repeating: 0x5a, count: 1 << 20).write(to: URL(fileURLWithPath: canary))
        try Data("k".utf8).write(to: URL(fileURLWithPath: dir + "/kernel"))
        _ = try await Fixtures.run("/usr/bin/qemu-img", ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", canary, dir + "/backed.qcow2"])
        _ = try await Fixtures.run("/usr/bin/qemu-img", ["create", "-q", "-f", "qcow2", "-o", "data_file=\(canary),data_file_raw=on", dir + "/data.qcow2", "1M"])
        // A vmdk's parent must be a vmdk: the canary wrapped in one.
        _ = try await Fixtures.run("/usr/bin/qemu-img", ["convert", "-q", "-O", "vmdk", canary, dir + "/parent.vmdk"])
        _ = try await Fixtures.run("/usr/bin/qemu-img", ["create", "-q", "-f", "vmdk", "-F", "vmdk", "-b", dir + "/parent.vmdk", dir + "/child.vmdk"])
        let before = try Data(contentsOf: URL(fileURLWithPath: canary))
        let atime = try FileManager.default.attributesOfItem(atPath: canary)[.modificationDate] as? Date
        for image in ["backed.qcow2", "data.qcow2", "child.vmdk"] {
            guard FS.isRegularFile(dir + "/" + image) else { Issue.record("qemu-img made no \(image)"); continue }
            let result = try await Fixtures.rootfs(["boot", dir + "/" + image, "--kernel", dir + "/kernel", "--accel", "tcg", "--", "true"],
                                                   environment: ["TMPDIR": dir])
            #expect(result.status == 125)  // rootfs's own refusal, as docker run's 125
            #expect(result.stderr.contains("names another file"), "\(image): \(result.stderr)")
            #expect(!result.stderr.contains("booting"), "\(image): QEMU must not start: \(result.stderr)")
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: canary)) == before)
        #expect(try FileManager.default.attributesOfItem(atPath: canary)[.modificationDate] as? Date == atime)
        // Only what the test made: no work directory left behind.
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: dir))
            == ["host-secret.raw", "kernel", "backed.qcow2", "data.qcow2", "parent.vmdk", "child.vmdk"])
    }

    @Test func jsonNamesAreRefused() async throws {
        let dir = try Fixtures.temporaryDirectory("bootjson"); defer { FS.remove(dir) }
        let result = try await Fixtures.rootfs(["boot", #"json:{"driver":"file","filename":"/etc/shadow"}"#, "--kernel", "/nonexistent", "--", "true"],
                                               workingDirectory: dir)
        #expect(result.status == 125)  // rootfs's own refusal, as docker run's 125
        #expect(result.stderr.contains("starts with json:"), "\(result.stderr)")
    }

    @Test func pathsAreQuotedForQEMU() throws {
        var options = BootOptions(image: "/img/disk.img,snapshot=off,file=/etc/shadow", kernel: "/k", command: ["true"])
        options.unprivilegedUser = "nobody"
        let arguments = try QEMUBoot(options: options).qemuCommand(kind: .partitionedDisk, accelerator: .tcg,
                                                                    consoleLog: "/t/a,b", statusLog: "/t/s").arguments
        let drive = try #require(arguments.firstIndex(of: "-drive"))
        #expect(arguments[drive + 1] == "if=none,id=d0,format=raw,file.driver=file,file.filename=/img/disk.img,,snapshot=off,,file=/etc/shadow")
        #expect(arguments.contains("file,id=console,append=on,path=/t/a,,b"))
        let sandbox = try #require(arguments.firstIndex(of: "-sandbox"))
        #expect(arguments[sandbox + 1].hasPrefix("on,"))
        #expect(arguments[sandbox + 2 ... sandbox + 3] == ["-runas", "nobody"])
        #expect(BootImageKind.probeCommand(image: "/i,x.qcow2", container: .qcow2, output: "/o").arguments
            == ["dd", "--image-opts", "-O", "raw", "bs=1M", "count=4",
                "if=driver=qcow2,file.driver=file,file.filename=/i,,x.qcow2,backing=", "of=/o"])
    }
}
