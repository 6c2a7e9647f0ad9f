import Foundation
import Testing
@testable import RootfsSupport

/// Numbers from files and flags near 2^63: clear errors through the CLI, no trap, nothing left behind.
@Suite struct MalformedNumberTests {
    @Test func aHugeInstalledSizeIsAClearError() async throws {
        let dir = try Fixtures.temporaryDirectory("hugesize"); defer { FS.remove(dir) }
        let tree = dir + "/tree"
        try FileManager.default.createDirectory(atPath: tree + "/var/lib/dpkg", withIntermediateDirectories: true)
        try "Package: huge\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\nInstalled-Size: 9223372036854775807\n\n"
            .write(toFile: tree + "/var/lib/dpkg/status", atomically: true, encoding: .utf8)
        for arguments in [["size", tree], ["size", tree, "--json"]] {
            let result = try await Fixtures.rootfs(arguments, environment: ["TMPDIR": dir])
            #expect(result.status == 1, "\(arguments): \(result.stderr)")
            #expect(result.stderr.contains("Installed-Size of 9223372036854775807 KiB"), "\(result.stderr)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["tree"])
    }

    @Test func aHugeFreeSpaceIsRefusedBeforeAnyWork() async throws {
        let dir = try Fixtures.temporaryDirectory("hugefree"); defer { FS.remove(dir) }
        try FileManager.default.createDirectory(atPath: dir + "/tree/etc", withIntermediateDirectories: true)
        let result = try await Fixtures.rootfs(["image", dir + "/tree", "-o", dir + "/out.img", "--free-space", "9223372036854775807"],
                                               environment: ["TMPDIR": dir])
        #expect(result.status != 0 && result.status < 128, "\(result.status): a trap is a signal")
        #expect(result.stderr.contains("--free-space 9223372036854775807 MiB is more than an ext4 image holds"), "\(result.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["tree"])
    }
}

/// A damaged archive is an error, not a shorter listing.
@Suite struct DamagedArchiveTests {
    @Test func aCorruptTarHeaderMidArchiveIsAnErrorInSize() async throws {
        let dir = try Fixtures.temporaryDirectory("damagedtar"); defer { FS.remove(dir) }
        try FileManager.default.createDirectory(atPath: dir + "/t/etc", withIntermediateDirectories: true)
        for name in ["a", "b", "c"] { try Data(repeating: 0x61, count: 100).write(to: URL(fileURLWithPath: dir + "/t/etc/" + name)) }
        _ = try await Fixtures.run("/bin/tar", ["-C", dir + "/t", "--format=ustar", "-cf", dir + "/x.tar", "etc/a", "etc/b", "etc/c"])
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: dir + "/x.tar")))
        // The second member's header starts after the first's header and one data block; break its checksum.
        bytes[1024 + 148] ^= 0x07
        try Data(bytes).write(to: URL(fileURLWithPath: dir + "/x.tar"))
        let result = try await Fixtures.rootfs(["size", dir + "/x.tar"])
        #expect(result.status == 1, "\(result.stdout)\n\(result.stderr)")
        #expect(result.stderr.contains("cannot read the archive"), "\(result.stderr)")
    }
}

@Suite struct SparseMemberTests {
    /// A pax sparse member whose real size is 2^63-1 (GNU sparse 0.1 keys, written by Python's tarfile).
    @Test func aHugeSparseRealSizeIsAClearErrorAndLeavesNoTemporary() async throws {
        let dir = try Fixtures.temporaryDirectory("hugesparse"); defer { FS.remove(dir) }
        let script = """
        import tarfile, io, sys
        with tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT) as t:
            d = tarfile.TarInfo('etc'); d.type = tarfile.DIRTYPE; d.mode = 0o755; t.addfile(d)
            f = tarfile.TarInfo('etc/big'); f.size = 4; f.mode = 0o644
            f.pax_headers = {'GNU.sparse.size': '9223372036854775807', 'GNU.sparse.numblocks': '1', 'GNU.sparse.map': '0,4'}
            t.addfile(f, io.BytesIO(b'abcd'))
        """
        _ = try await Fixtures.run("/usr/bin/python3", ["-c", script, dir + "/sparse.tar"])
        for (command, output) in [("image", "out.img"), ("initrd", "out.initrd")] {
            let result = try await Fixtures.rootfs([command, dir + "/sparse.tar", "-o", dir + "/" + output], environment: ["TMPDIR": dir])
            #expect(result.status == 1, "\(command): \(result.status) \(result.stderr)")
            #expect(result.stderr.contains("claims 9223372036854775807 bytes"), "\(command): \(result.stderr)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["sparse.tar"])
    }
}

@Suite struct OutputLockLinkTests {
    /// A planted `.NAME.lock` hard-linked to a file elsewhere: refused, the other file untouched.
    @Test func aLockFileHardLinkedElsewhereIsRefused() throws {
        let dir = try Fixtures.temporaryDirectory("locklink"); defer { FS.remove(dir) }
        let canary = dir + "/canary"
        try "keep me\n".write(toFile: canary, atomically: false, encoding: .utf8)
        let output = dir + "/out/x.img"
        try FileManager.default.createDirectory(atPath: dir + "/out", withIntermediateDirectories: true)
        #expect(link(canary, OutputLock.lockPath(for: output)) == 0)
        #expect(throws: RootfsError.self) { _ = try OutputLock(output: output) }
        #expect(try String(contentsOfFile: canary, encoding: .utf8) == "keep me\n")
        // Without the planted link the lock works and goes away with itself.
        unlink(OutputLock.lockPath(for: output))
        do { let lock = try OutputLock(output: output); _ = lock }
        #expect(!FS.exists(OutputLock.lockPath(for: output)))
    }
}

@Suite struct DistroNameTests {
    /// `rootfs build ''` must not take the search directory itself for a distro.
    @Test func anEmptyDistroNameIsRefused() async throws {
        let dir = try Fixtures.temporaryDirectory("emptydistro"); defer { FS.remove(dir) }
        try "OS_VERSION=1\n".write(toFile: dir + "/config.sh", atomically: true, encoding: .utf8)
        for name in ["", ".", ".."] {
            let result = try await Fixtures.rootfs(["build", name, "--distros-dir", dir, "-r", dir + "/out"])
            #expect(result.status != 0, "\(name)")
            #expect(result.stderr.contains("is not a distro name"), "'\(name)': \(result.stderr)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["config.sh"])
    }
}
