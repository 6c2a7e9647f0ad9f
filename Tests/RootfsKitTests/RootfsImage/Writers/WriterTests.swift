import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// A small tree with every kind of entry the writers must keep.
func makeSampleTree() throws -> String {
    let root = try Fixtures.temporaryDirectory("sample")
    try FS.makeDirectories(root + "/usr/bin")
    try FS.makeDirectories(root + "/etc")
    try FS.makeDirectories(root + "/dev")
    try "hello\n".write(toFile: root + "/etc/hostname", atomically: true, encoding: .utf8)
    chmod(root + "/etc/hostname", 0o640)
    chown(root + "/etc/hostname", 0, 42)
    try "#!/bin/sh\n".write(toFile: root + "/usr/bin/tool", atomically: true, encoding: .utf8)
    chmod(root + "/usr/bin/tool", 0o4755)
    link(root + "/usr/bin/tool", root + "/usr/bin/tool-again")
    symlink("/usr/bin/tool", root + "/usr/bin/abs-link")
    try FS.makeDirectories(root + "/sbin")
    symlink("/usr/bin/tool", root + "/sbin/init")
    mkfifo(root + "/dev/fifo", 0o600)
    mknod(root + "/dev/null", S_IFCHR | 0o666, makedev(1, 3))
    // A name that is not UTF-8.
    let weird = root + "/etc/bad-\u{FF}"
    _ = weird
    var bytes = Array((root + "/etc/bad-").utf8) + [0xff, 0x0a, 0x20, 0x61]
    bytes.append(0)
    let fd = bytes.withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { open($0.baseAddress!, O_CREAT | O_WRONLY, 0o644) } }
    close(fd)
    return root
}

private func makedev(_ major: UInt32, _ minor: UInt32) -> dev_t {
    dev_t((UInt64(major) << 8) | UInt64(minor))
}

@Suite struct InitrdWriterTests {
    @Test(arguments: [Compression.zstd, .gzip, .none])
    func writesEveryKindOfEntryInAStableOrder(compression: Compression) throws {
        let root = try makeSampleTree()
        let out = try Fixtures.temporaryDirectory("out")
        defer { FS.remove(root); FS.remove(out) }
        let stats = try InitrdWriter(compression: compression).write(tree: root, to: out + "/x.initrd")
        let entries = try ArchiveReader.list(out + "/x.initrd")
        #expect(stats.entries == entries.count)
        let paths = entries.map(\.path)
        #expect(paths.first == ".")
        // The tree has no /init: one is added, in its sorted place among the root's entries.
        let top = paths.filter { !$0.contains("/") && $0 != "." }
        #expect(top == ["dev", "etc", "init", "sbin", "usr"])
        let byPath = Dictionary(entries.map { ($0.path, $0) }, uniquingKeysWith: { a, _ in a })
        #expect(byPath["init"]?.symlink == "/sbin/init")
        #expect(byPath["sbin/init"]?.symlink == "/usr/bin/tool")
        #expect(byPath["usr/bin/abs-link"]?.symlink == "/usr/bin/tool")
        let hostname = try #require(byPath["etc/hostname"])
        #expect(hostname.mode & 0o7777 == 0o640)
        #expect(hostname.gid == 42)
        #expect(hostname.size == 6)
        #expect(byPath["usr/bin/tool"]?.mode == UInt32(S_IFREG) | 0o4755)
        // A hard link is stored once: the second name refers to the first.
        #expect(byPath["usr/bin/tool-again"]?.hardlink == "usr/bin/tool")
        #expect(byPath["dev/fifo"]?.fileType == UInt32(S_IFIFO))
        #expect(byPath["dev/null"]?.fileType == UInt32(S_IFCHR))
        #expect(byPath["dev/null"]?.rdevMajor == 1 && byPath["dev/null"]?.rdevMinor == 3)
        #expect(paths.contains { $0.hasPrefix("etc/bad-") })
        // Sorted bytewise within each directory, parents first.
        let etc = paths.filter { $0.hasPrefix("etc/") }
        #expect(etc == etc.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) })
        for (i, p) in paths.enumerated() where p.contains("/") {
            let parent = String(p[..<p.lastIndex(of: "/")!])
            #expect(paths[..<i].contains(parent), "parent of \(p) comes first")
        }
    }

    @Test func sameTreeSameBytesAndEpochClampsTimes() throws {
        let root = try makeSampleTree()
        let out = try Fixtures.temporaryDirectory("out")
        defer { FS.remove(root); FS.remove(out) }
        let writer = InitrdWriter(compression: .gzip, epoch: 1_000_000)
        try writer.write(tree: root, to: out + "/a")
        // Touch every file: with SOURCE_DATE_EPOCH in the past, times are clamped.
        try ToolCommandSync.run(["find", root, "-exec", "touch", "-h", "{}", "+"])
        try writer.write(tree: root, to: out + "/b")
        #expect(FileManager.default.contents(atPath: out + "/a") == FileManager.default.contents(atPath: out + "/b"))
        #expect(try ArchiveReader.list(out + "/a").allSatisfy { $0.mtime == 1_000_000 })
    }

    @Test func existingInitIsKept() throws {
        let root = try makeSampleTree()
        let out = try Fixtures.temporaryDirectory("out")
        defer { FS.remove(root); FS.remove(out) }
        symlink("/usr/bin/tool", root + "/init")
        try InitrdWriter(compression: .none).write(tree: root, to: out + "/x")
        let inits = try ArchiveReader.list(out + "/x").filter { $0.path == "init" }
        #expect(inits.count == 1 && inits[0].symlink == "/usr/bin/tool")
    }

    /// The writer streams: its peak memory must not grow with the tree or its content
    /// (measured on the real CLI with /usr/bin/time, on 256 MiB of incompressible data).
    @Test func peakMemoryStaysUnder100MBOnIncompressibleData() async throws {
        let root = try makeSampleTree()
        let out = try Fixtures.temporaryDirectory("out")
        defer { FS.remove(root); FS.remove(out) }
        try ToolCommandSync.run(["dd", "if=/dev/urandom", "of=\(root)/usr/bin/blob", "bs=1M", "count=256", "status=none"])
        try FS.makeDirectories(root + "/usr/bin")
        try FileManager.default.copyItem(atPath: Fixtures.agentBinary, toPath: root + "/usr/bin/rootfs-agent")
        let r = try await ProcessRunner().capture(ToolCommand("/usr/bin/time", [
            "-f", "maxrss=%M", Fixtures.rootfsBinary, "initrd", root, "-o", out + "/x.initrd"]))
        let line = try #require(r.standardError.split(separator: "\n").last { $0.hasPrefix("maxrss=") })
        let kib = try #require(Int(line.dropFirst("maxrss=".count)))
        print("InitrdWriterTests: peak RSS \(kib / 1024) MiB for 256 MiB of random data")
        #expect(kib < 100 * 1024)
        #expect(FS.fileSize(out + "/x.initrd") > 256 << 20)
    }

    @Test func failureLeavesTheEarlierOutputAlone() throws {
        let out = try Fixtures.temporaryDirectory("out")
        defer { FS.remove(out) }
        try "earlier".write(toFile: out + "/x", atomically: true, encoding: .utf8)
        #expect(throws: RootfsError.self) {
            try InitrdWriter().write(tree: out + "/missing-tree", to: out + "/x")
        }
        #expect(try String(contentsOfFile: out + "/x", encoding: .utf8) == "earlier")
        #expect(try FileManager.default.contentsOfDirectory(atPath: out) == ["x"])
    }
}

@Suite struct DiskImageWriterTests {
    @Test func oneExt4PartitionAtOneMiBThatFsckAccepts() async throws {
        let root = try makeSampleTree()
        let out = try Fixtures.temporaryDirectory("out")
        defer { FS.remove(root); FS.remove(out) }
        let image = out + "/disk.img"
        let (stats, uuid) = try await DiskImageWriter(freeSpaceMiB: 8).write(tree: root, to: image)
        let runner = ProcessRunner()
        let table = try await runner.capture(ToolCommand("sfdisk", ["--json", image])).standardOutput
        #expect(table.contains("\"start\": 2048"))
        #expect(table.contains("\"type\": \"83\""))
        let part = image + "?offset=1048576"
        try await runner.capture(ToolCommand("e2fsck", ["-fn", part]))
        let content = try await runner.capture(ToolCommand("debugfs", ["-R", "cat /etc/hostname", part])).standardOutput
        #expect(content == "hello\n")
        let stat = try await runner.capture(ToolCommand("debugfs", ["-R", "stat /usr/bin/tool", part])).standardOutput
        #expect(stat.contains("Mode:  04755"))
        let uuidOut = try await runner.capture(ToolCommand("dumpe2fs", ["-h", part])).standardOutput
        #expect(uuidOut.contains(uuid))
        #expect(stats.outputBytes == Int64(try FileManager.default.attributesOfItem(atPath: image)[.size] as! UInt64))
    }

    @Test func sizedFromTheTreePlusFreeSpace() throws {
        let root = try makeSampleTree()
        defer { FS.remove(root) }
        let big = try Fixtures.temporaryDirectory("big")
        defer { FS.remove(big) }
        try Data(count: 20 << 20).write(to: URL(fileURLWithPath: big + "/blob"))
        let small = try DiskImageWriter(freeSpaceMiB: 0).sizing(tree: root)
        let large = try DiskImageWriter(freeSpaceMiB: 0).sizing(tree: big)
        let roomy = try DiskImageWriter(freeSpaceMiB: 100).sizing(tree: big)
        #expect(large.filesystemBytes - small.filesystemBytes >= 20 << 20)
        #expect(roomy.filesystemBytes - large.filesystemBytes >= 100 << 20)
        #expect(large.filesystemBytes % (1 << 20) == 0)
    }

    @Test func uuidComesFromSourceDateEpoch() {
        let a = DiskImageWriter(epoch: 1_700_000_000).filesystemUUID()
        #expect(a == DiskImageWriter(epoch: 1_700_000_000).filesystemUUID())
        #expect(a != DiskImageWriter(epoch: 1_700_000_001).filesystemUUID())
        #expect(DiskImageWriter().filesystemUUID() != DiskImageWriter().filesystemUUID())
        #expect(a.count == 36 && Array(a)[14] == "4")
    }
}

@Suite struct SmallPartsTests {
    @Test func sha256KnownAnswers() {
        #expect(SHA256.hexDigest(of: []) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hexDigest(of: Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256.hexDigest(of: Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    @Test func mbrLayout() {
        let b = MBR(diskSignature: 0x11223344, partitionStartSector: 2048, partitionSectors: 4096).bytes
        #expect(b.count == 512 && b[510] == 0x55 && b[511] == 0xaa)
        #expect(Array(b[440..<444]) == [0x44, 0x33, 0x22, 0x11])
        #expect(b[446 + 4] == 0x83)
        #expect(Array(b[454..<458]) == [0x00, 0x08, 0, 0])
    }

    @Test func packageNamesAreLiteralWordsOnly() {
        for good in ["vim", "libc6:amd64", "foo=1.2-3", "g++", "linux-image-6.1", "pkg/bookworm-backports"] {
            #expect(PackageName.isValid(good), "\(good)")
        }
        for bad in ["foo; touch /tmp/pwned", "-oDebug", "--help", "a b", "$(id)", "`x`", "a|b", ""] {
            #expect(!PackageName.isValid(bad), "\(bad)")
        }
    }

    @Test func staticAgentIsStaticAndTheHostShellIsNot() {
        #expect(ELF.isELF(Fixtures.agentBinary) && ELF.isStatic(Fixtures.agentBinary))
        #expect(ELF.isELF("/bin/bash") && !ELF.isStatic("/bin/bash"))
        #expect(!ELF.isELF("/etc/passwd"))
    }
}

/// Runs a short command in tests (set-up only; the code under test uses ProcessRunner).
enum ToolCommandSync {
    static func run(_ argv: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = argv
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw RootfsError("\(argv) failed") }
    }
}
