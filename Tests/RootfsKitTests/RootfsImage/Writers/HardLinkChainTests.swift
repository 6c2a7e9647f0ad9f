import Foundation
import Testing
@testable import RootfsImage
@testable import RootfsSupport

/// A non-canonical tar whose hard links form a chain (c -> b -> a, members out of
/// order): every link is resolved to its root before grouping, so each output holds
/// the data once under every name, and the same bytes on every run.
@Suite struct HardLinkChainTests {
    @Test func aChainOfHardLinksKeepsItsDataAndGivesTheSameBytesEveryRun() async throws {
        let dir = try Fixtures.temporaryDirectory("linkchain"); defer { FS.remove(dir) }
        let script = """
        import tarfile, io, sys
        with tarfile.open(sys.argv[1], 'w', format=tarfile.GNU_FORMAT) as t:
            def add(name, kind, target=None, data=b''):
                i = tarfile.TarInfo(name); i.type = kind; i.mode = 0o644 if kind != tarfile.DIRTYPE else 0o755
                if target: i.linkname = target
                i.size = len(data); t.addfile(i, io.BytesIO(data))
            add('etc', tarfile.DIRTYPE)
            add('etc/z', tarfile.REGTYPE, data=b'the data\\n')
            add('etc/m', tarfile.LNKTYPE, 'etc/z')
            add('etc/b', tarfile.LNKTYPE, 'etc/m')
            add('etc/a', tarfile.LNKTYPE, 'etc/b')
            add('etc/y', tarfile.REGTYPE, data=b'other\\n')
            add('etc/x', tarfile.LNKTYPE, 'etc/y')
        """
        _ = try await Fixtures.run("/usr/bin/python3", ["-c", script, dir + "/chain.tar"])
        var digests = Set<String>()
        for run in 0..<6 {
            let output = dir + "/out\(run).tar"
            let result = try await Fixtures.rootfs(["image", dir + "/chain.tar", "-o", output, "--format", "tar"])
            #expect(result.status == 0, "\(result.stderr)")
            digests.insert(try SHA256.hexDigest(ofFile: output))
            let extracted = dir + "/x\(run)"
            try FS.makeDirectories(extracted)
            _ = try await Fixtures.run("/bin/tar", ["-C", extracted, "-xf", output])
            for name in ["z", "m", "b", "a"] {
                #expect(try String(contentsOfFile: extracted + "/etc/" + name, encoding: .utf8) == "the data\n", "run \(run): \(name)")
            }
            #expect(try String(contentsOfFile: extracted + "/etc/x", encoding: .utf8) == "other\n")
            var a = stat(), z = stat()
            #expect(lstat(extracted + "/etc/a", &a) == 0 && lstat(extracted + "/etc/z", &z) == 0 && a.st_ino == z.st_ino && z.st_nlink == 4)
        }
        #expect(digests.count == 1, "\(digests.count) different outputs from one input")
        // A cycle is a clear error.
        let cycle = """
        import tarfile, io, sys
        with tarfile.open(sys.argv[1], 'w', format=tarfile.GNU_FORMAT) as t:
            for name, target in [('b', 'a'), ('a', 'b')]:
                i = tarfile.TarInfo(name); i.type = tarfile.LNKTYPE; i.linkname = target; t.addfile(i)
        """
        _ = try await Fixtures.run("/usr/bin/python3", ["-c", cycle, dir + "/cycle.tar"])
        let looped = try await Fixtures.rootfs(["image", dir + "/cycle.tar", "-o", dir + "/cycle.out.tar", "--format", "tar"])
        #expect(looped.status == 1 && looped.stderr.contains("hard link"), "\(looped.stderr)")
        #expect(!FS.exists(dir + "/cycle.out.tar"))
    }
}

/// A cpio header claiming a name of 0xffffffff bytes (libarchive would reserve 4 GiB
/// for it): a clear error from every command that reads the archive, nothing left.
@Suite struct CpioNameSizeTests {
    @Test func aHugeCpioNameSizeIsAClearError() async throws {
        let dir = try Fixtures.temporaryDirectory("cpioname"); defer { FS.remove(dir) }
        func newc(name: String, nameSize: Int, data: String, mode: Int = 0o100644) -> [UInt8] {
            let fields = [1, mode, 0, 0, 1, 0, data.utf8.count, 0, 0, 0, 0, nameSize, 0]
            var bytes = Array("070701".utf8) + fields.flatMap { Array(String(format: "%08X", $0).utf8) }
            bytes += Array(name.utf8) + [0]
            while bytes.count % 4 != 0 { bytes.append(0) }
            bytes += Array(data.utf8)
            while bytes.count % 4 != 0 { bytes.append(0) }
            return bytes
        }
        // A good member, then one whose name size is 0xffffffff, then the trailer.
        var archive = newc(name: "etc", nameSize: 4, data: "", mode: 0o040755)
        archive += newc(name: "etc/x", nameSize: 0xFFFF_FFFF, data: "abc")
        archive += newc(name: "TRAILER!!!", nameSize: 11, data: "")
        try Data(archive).write(to: URL(fileURLWithPath: dir + "/bad.cpio"))
        for arguments in [["size", dir + "/bad.cpio"], ["initrd", dir + "/bad.cpio", "-o", dir + "/out.initrd"],
                          ["image", dir + "/bad.cpio", "-o", dir + "/out.tar", "--format", "tar"]] {
            let result = try await Fixtures.rootfs(arguments, environment: ["TMPDIR": dir])
            #expect(result.status == 1, "\(arguments): \(result.status) \(result.stderr)")
            #expect(result.stderr.contains("cpio member 2 claims a name of 4294967295 bytes"), "\(arguments): \(result.stderr)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["bad.cpio"])
        // The same archive with an honest name size is read.
        var good = newc(name: "etc", nameSize: 4, data: "", mode: 0o040755) + newc(name: "etc/x", nameSize: 6, data: "abc")
        good += newc(name: "TRAILER!!!", nameSize: 11, data: "")
        try Data(good).write(to: URL(fileURLWithPath: dir + "/good.cpio"))
        let listed = try await Fixtures.rootfs(["initrd", dir + "/good.cpio", "-o", dir + "/good.initrd"])
        #expect(listed.status == 0, "\(listed.stderr)")
        #expect(try ArchiveReader.list(dir + "/good.initrd").contains { $0.path == "etc/x" })
    }
}
