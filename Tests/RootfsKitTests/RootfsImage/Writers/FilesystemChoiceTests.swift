import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// Runs a checking tool (not the one that wrote the image); throws on a non-zero exit.
private func check(_ tool: String, _ args: [String], in directory: String? = nil) async throws -> String {
    let out = try await ProcessRunner().capture(ToolCommand(tool, args, workingDirectory: directory))
    return out.standardOutput + out.standardError
}

private func bytes(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }
private let epochEnv = ["SOURCE_DATE_EPOCH": "1700000000"]

/// One member of a hand-made tar: owners, modes and names exactly as given.
private struct Member {
    var path: [UInt8]
    var mode: UInt32
    var uid: UInt32 = 0
    var gid: UInt32 = 0
    var content: [UInt8] = []
    var target: [UInt8]? = nil
    var hardlink: [UInt8]? = nil
    var rdev: UInt64 = 0

    static func dir(_ p: String, _ mode: UInt32 = 0o755, uid: UInt32 = 0, gid: UInt32 = 0) -> Member {
        Member(path: Array(p.utf8), mode: 0o040000 | mode, uid: uid, gid: gid)
    }
    static func file(_ p: [UInt8], _ text: String, _ mode: UInt32 = 0o644, uid: UInt32 = 0, gid: UInt32 = 0) -> Member {
        Member(path: p, mode: 0o100000 | mode, uid: uid, gid: gid, content: Array(text.utf8))
    }
    static func file(_ p: String, _ text: String, _ mode: UInt32 = 0o644, uid: UInt32 = 0, gid: UInt32 = 0) -> Member {
        file(Array(p.utf8), text, mode, uid: uid, gid: gid)
    }
}

/// Writes a tar of exactly these members with libarchive (no extraction on this host).
private func writeTar(_ members: [Member], to path: String) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    defer { close(fd) }
    let archive = try ArchiveWriteHandle(format: .paxRestricted, compression: .none)
    try archive.open(fd: fd)
    let entry = ArchiveEntryHandle()
    for m in members {
        entry.clear()
        entry.setPath(m.path)
        entry.setOwner(uid: m.uid, gid: m.gid)
        entry.setMode(mode_t(m.mode))
        entry.setModificationTime(1_600_000_000)
        if let t = m.target { entry.setSymlink(t) }
        if let h = m.hardlink { entry.setHardlink(h); entry.setSize(0) } else { entry.setSize(Int64(m.content.count)) }
        if m.rdev != 0 { entry.setDeviceNumber(dev_t(m.rdev)) }
        try archive.writeHeader(entry)
        if !m.content.isEmpty && m.hardlink == nil { try m.content.withUnsafeBytes { try archive.writeData($0) } }
        try archive.finishEntry()
    }
    try archive.close()
}

/// What `rootfs image` checks a tree has: an init and the agent (scripts are enough here).
private let bootable: [Member] = [
    .dir("."), .dir("sbin"), .dir("usr"), .dir("usr/bin"), .file("usr/bin/rootfs-agent", "#!/bin/sh\n", 0o755),
    Member(path: Array("sbin/init".utf8), mode: 0o120777, target: Array("../usr/bin/rootfs-agent".utf8)),
]

/// A small tree with everything whose owner or mode a file system can lose: owners no
/// file on this host has, setuid/setgid, a sticky directory, devices, a fifo, links.
private let ownedTree: [Member] = bootable + [
    .dir("etc"), .dir("dev"), .dir("tmp", 0o1777), .dir("home"), .dir("home/u", 0o750, uid: 1234, gid: 5678),
    .file("etc/shadow", "root:*:1::::::\n", 0o640, gid: 42),
    .file("home/u/notes", "mine\n", 0o600, uid: 1234, gid: 5678),
    .file("sbin/su", "#!/bin/sh\n", 0o4755),
    .file("sbin/wall", "#!/bin/sh\n", 0o2755, gid: 5),
    Member(path: Array("sbin/su-again".utf8), mode: 0o100000 | 0o4755, hardlink: Array("sbin/su".utf8)),
    Member(path: Array("dev/null".utf8), mode: 0o020000 | 0o666, rdev: (1 << 8) | 3),
    Member(path: Array("dev/sda".utf8), mode: 0o060000 | 0o660, gid: 6, rdev: 8 << 8),
    Member(path: Array("dev/fifo".utf8), mode: 0o010000 | 0o644),
    Member(path: Array("etc/mtab".utf8), mode: 0o120777, target: Array("../proc/self/mounts".utf8)),
    .file("etc/a$b", "dollar inside\n"), .file("etc/x:y", "colon inside\n"), .file([101, 116, 99, 47, 0xff, 0xfe], "not utf-8\n"),
]

/// erofs compressions, xfs from a protofile, ext4 block sizes: small trees through the
/// real CLI, each image checked by another tool. Root: to run the writer as nobody.
@Suite(.serialized, .requires(.root), .tags(.root)) struct FilesystemChoiceTests {
    /// The inode fields xfs_db prints for a guest path of an xfs image.
    func xfsInode(_ image: String, _ path: String) async throws -> String {
        try await check("xfs_db", ["-r", "-c", "path " + path, "-c", "print core.mode core.uid core.gid", image])
    }

    @Test func erofsFromATarWithoutRootIsTheImageRootWrites() async throws {
        let dir = try Fixtures.temporaryDirectory("erofs-owners"); defer { FS.remove(dir) }
        chmod(dir, 0o777)
        // Without the non-UTF-8 name: TreeExtractor, which mkfs.erofs needs, writes names through Strings (U+FFFD).
        try writeTar(ownedTree.filter { $0.path.allSatisfy { $0 < 0x80 } }, to: dir + "/t.tar")
        chmod(dir + "/t.tar", 0o644)
        let nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", Fixtures.rootfsBinary]
        for (name, extra) in [("x.erofs", [String]()), ("x.img", ["--fs", "erofs", "--no-partition-table"])] {
            let rootless = try await Fixtures.run(nobody[0], Array(nobody.dropFirst()) + ["image", dir + "/t.tar", "-o", dir + "/nobody-" + name] + extra,
                                                  environment: epochEnv)
            try #require(rootless.status == 0, "\(rootless.stderr)")
            let root = try await Fixtures.rootfs(["image", dir + "/t.tar", "-o", dir + "/root-" + name] + extra, environment: epochEnv)
            try #require(root.status == 0, "\(root.stderr)")
            _ = try await check("fsck.erofs", [dir + "/nobody-" + name])
            // Root extracts with real owners and device nodes; nobody patches mkfs.erofs's --all-root image: the same bytes.
            #expect(try bytes(dir + "/nobody-" + name) == bytes(dir + "/root-" + name), "\(name): root and rootless differ")
        }
        let image = dir + "/nobody-x.erofs"
        let expected: [(String, [String])] = [
            ("/etc/shadow", ["Uid: 0   Gid: 42", "Access: 0640"]), ("/home/u/notes", ["Uid: 1234   Gid: 5678", "Access: 0600"]),
            ("/home/u", ["Uid: 1234   Gid: 5678", "Access: 0750"]), ("/sbin/wall", ["Gid: 5"]),
            ("/dev/null", ["char dev", "Access: 0666"]), ("/dev/sda", ["block dev", "Gid: 6"]),
        ]
        // (dump.erofs prints the permission bits only: setuid, setgid and sticky are checked by the equal bytes above.)
        for (path, want) in expected {
            let info = try await check("dump.erofs", ["--path=" + path, image])
            for w in want { #expect(info.contains(w), "\(path): \(info)") }
        }
    }

    @Test func xfsFromATarKeepsOwnersModesAndDevicesWithoutRoot() async throws {
        let dir = try Fixtures.temporaryDirectory("xfs-owners"); defer { FS.remove(dir) }
        chmod(dir, 0o777)
        try writeTar(ownedTree, to: dir + "/t.tar")
        // As nobody: no right to chown, mknod or mount anything.
        let r = try await Fixtures.run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", Fixtures.rootfsBinary,
                                                             "image", dir + "/t.tar", "-o", dir + "/x.img", "--fs", "xfs", "--no-partition-table"])
        try #require(r.status == 0, "\(r.stderr)")
        let image = dir + "/x.img"
        var st = stat(); stat(image, &st)
        #expect(st.st_uid == 65534, "written by nobody")
        let repair = try await check("xfs_repair", ["-n", "-f", image])
        #expect(repair.contains("Phase 7"), "\(repair)")
        let expected: [(String, [String])] = [("/etc/shadow", ["core.mode = 0100640", "core.uid = 0", "core.gid = 42"]),
                             ("/home/u", ["core.mode = 040750", "core.uid = 1234", "core.gid = 5678"]),
                             ("/home/u/notes", ["core.mode = 0100600", "core.uid = 1234", "core.gid = 5678"]),
                             ("/sbin/su", ["core.mode = 0104755"]), ("/sbin/su-again", ["core.mode = 0104755"]),
                             ("/sbin/wall", ["core.mode = 0102755", "core.gid = 5"]),
                             ("/tmp", ["core.mode = 041777"]),
                             ("/dev/null", ["core.mode = 020666"]), ("/dev/sda", ["core.mode = 060660", "core.gid = 6"]),
                             ("/dev/fifo", ["core.mode = 010644"]), ("/etc/mtab", ["core.mode = 0120777"]),
                             ("/etc/a$b", ["core.mode = 0100644"]), ("/etc/x:y", ["core.mode = 0100644"])]
        for (path, want) in expected {
            let fields = try await xfsInode(image, path)
            for w in want { #expect(fields.contains(w), "\(path): \(fields)") }
        }
        // Device numbers, link target and contents, read back by xfs_db.
        let null = try await check("xfs_db", ["-r", "-c", "path /dev/null", "-c", "print u3.dev", image])
        #expect(null.contains("0x40003"), "IRIX_MKDEV(1, 3): \(null)")
        let link = try await check("xfs_db", ["-r", "-c", "path /etc/mtab", "-c", "print u3.symlink", image])
        #expect(link.contains("../proc/self/mounts"), "\(link)")
        let listing = try await check("xfs_db", ["-r", "-c", "ls /etc", image])
        #expect(listing.contains("a$b") && listing.contains("x:y") && listing.contains("shadow"), "\(listing)")
        #expect(!listing.contains("proto") && !listing.contains(" f\n"), "no staging name leaks into the tree: \(listing)")
    }

    static let hostileNames: [(String, [UInt8])] = [
        ("a name with a space", Array("etc/with space".utf8)), ("a newline", Array("etc/new\nline".utf8)),
        ("a tab", Array("etc/tab\there".utf8)), ("a control byte", Array("etc/bell".utf8) + [7]),
        ("a comment", Array("etc/:comment".utf8)), ("the end of a directory", Array("etc/$".utf8)),
        ("DEL", Array("etc/x".utf8) + [0x7f]), ("a carriage return", Array("etc/cr\r".utf8)),
        // A name that, spliced in as is, would add an entry whose content mkfs.xfs reads from a host path.
        ("a forged entry", Array("etc/evil -u-777 0 0 /etc/shadow\nleak".utf8)),
    ]

    @Test(arguments: hostileNames)
    func xfsRefusesNamesItsProtofileCannotHold(_ what: String, _ name: [UInt8]) async throws {
        let dir = try Fixtures.temporaryDirectory("xfs-hostile"); defer { FS.remove(dir) }
        let members: [Member] = bootable + [.dir("etc"), .file("etc/ok", "fine\n"), .file(name, "x\n")]
        try writeTar(members, to: dir + "/t.tar")
        let r = try await Fixtures.rootfs(["image", dir + "/t.tar", "-o", dir + "/x.img", "--fs", "xfs"])
        #expect(r.status != 0, "\(what): accepted")
        #expect(r.stderr.contains("cannot be written to xfs"), "\(what): \(r.stderr)")
        #expect(r.stderr.contains("--fs ext4"), "the way around: \(r.stderr)")
        #expect(!FS.exists(dir + "/x.img"), "nothing left behind")
        // The same tree without the hostile name is written: the refusal is the name's.
        try writeTar(Array(members.dropLast()), to: dir + "/ok.tar")
        let ok = try await Fixtures.rootfs(["image", dir + "/ok.tar", "-o", dir + "/ok.img", "--fs", "xfs"])
        #expect(ok.status == 0, "\(ok.stderr)")
    }

    @Test func xfsRefusesAHostileLinkTargetAndASocket() async throws {
        let dir = try Fixtures.temporaryDirectory("xfs-hostile2"); defer { FS.remove(dir) }
        try writeTar(bootable + [Member(path: Array("l".utf8), mode: 0o120777, target: Array("x /etc/shadow".utf8))], to: dir + "/l.tar")
        let l = try await Fixtures.rootfs(["image", dir + "/l.tar", "-o", dir + "/l.img", "--fs", "xfs"])
        #expect(l.status != 0 && l.stderr.contains("its link target holds a space"), "\(l.stderr)")
        // A tar cannot hold a socket: a directory with one, bound here.
        try FS.makeDirectories(dir + "/s/sbin")
        try FS.makeDirectories(dir + "/s/usr/bin")
        try "#!/bin/sh\n".write(toFile: dir + "/s/usr/bin/rootfs-agent", atomically: false, encoding: .utf8)
        chmod(dir + "/s/usr/bin/rootfs-agent", 0o755)
        symlink("../usr/bin/rootfs-agent", dir + "/s/sbin/init")
        let sock = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(sock) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array((dir + "/s/sock").utf8CString)
        withUnsafeMutableBytes(of: &address.sun_path) { buf in for (i, c) in path.enumerated() where i < buf.count { buf[i] = UInt8(bitPattern: c) } }
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(sock, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        let s = try await Fixtures.rootfs(["image", dir + "/s", "-o", dir + "/s.img", "--fs", "xfs"])
        #expect(s.status != 0 && s.stderr.contains("socket"), "\(s.stderr)")
    }

    @Test(arguments: [1024, 2048]) func ext4BlockSizesAreE2fsckClean(_ size: Int) async throws {
        let dir = try Fixtures.temporaryDirectory("ext4-bs"); defer { FS.remove(dir) }
        // Without the non-UTF-8 name: TreeExtractor, which mke2fs needs, writes names through Strings (U+FFFD).
        try writeTar(ownedTree.filter { $0.path.allSatisfy { $0 < 0x80 } }, to: dir + "/t.tar")
        let r = try await Fixtures.rootfs(["image", dir + "/t.tar", "-o", dir + "/x.img", "--block-size", String(size), "--no-partition-table"],
                                          environment: epochEnv)
        try #require(r.status == 0, "\(r.stderr)")
        let fsck = try await check("e2fsck", ["-fn", dir + "/x.img"])
        #expect(fsck.contains("files"), "\(fsck)")
        let header = try await check("dumpe2fs", ["-h", dir + "/x.img"])
        #expect(header.contains("Block size:               \(size)\n"), "\(header)")
        let shadow = try await check("debugfs", ["-R", "stat /etc/shadow", dir + "/x.img"])
        #expect(shadow.contains("Group:    42") && shadow.contains("Mode:  0640"), "\(shadow)")
        // xfs takes the same block sizes.
        let x = try await Fixtures.rootfs(["image", dir + "/t.tar", "-o", dir + "/x.xfs.img", "--fs", "xfs", "--block-size", String(size),
                                           "--no-partition-table"])
        try #require(x.status == 0, "\(x.stderr)")
        let sb = try await check("xfs_db", ["-r", "-c", "sb 0", "-c", "print blocksize", dir + "/x.xfs.img"])
        #expect(sb.contains("blocksize = \(size)"), "\(sb)")
    }

    @Test func badFilesystemOptionsAreRefusedBeforeWriting() async throws {
        let dir = try Fixtures.temporaryDirectory("fs-bad"); defer { FS.remove(dir) }
        try writeTar(bootable + [.file("x", "x\n")], to: dir + "/t.tar")
        let cases: [([String], String)] = [
            (["--fs", "erofs", "--erofs-compression", "zstd"], "'zstd' is invalid for '--erofs-compression <lz4hc|lz4|none>'"),
            (["--fs", "erofs", "--block-size", "1024"], "cannot be used with erofs"),
            (["--block-size", "3000"], "not a block size"),
            (["--block-size", "8192", "--fs", "xfs"], "not a block size"),
        ]
        for (args, message) in cases {
            let r = try await Fixtures.rootfs(["image", dir + "/t.tar", "-o", dir + "/x.img"] + args)
            #expect(r.status != 0, "\(args) accepted")
            #expect(r.stderr.contains(message), "\(args): \(r.stderr)")
            #expect(!FS.exists(dir + "/x.img"))
        }
        // A bare erofs output with a block size other than 4096, and a block size on a tar output.
        let bare = try await Fixtures.rootfs(["image", dir + "/t.tar", "-o", dir + "/x.erofs", "--block-size", "2048"])
        #expect(bare.status != 0 && bare.stderr.contains("4096"), "\(bare.stderr)")
        let tar = try await Fixtures.rootfs(["image", dir + "/t.tar", "-o", dir + "/y.tar", "--block-size", "2048"])
        #expect(tar.status != 0 && tar.stderr.contains("--block-size applies to disk images"), "\(tar.stderr)")
        // 4096 is erofs's own block size: accepted.
        let ok = try await Fixtures.rootfs(["image", dir + "/t.tar", "-o", dir + "/ok.erofs", "--block-size", "4096"])
        #expect(ok.status == 0, "\(ok.stderr)")
    }
}

/// erofs as Kata builds it and xfs, from the real Debian tree (root, network: mmdebstrap).
@Suite(.serialized, .requires(.root, .network), .tags(.root, .network)) struct MeasuredFilesystemTests {
    @Test func erofsCompressionsAreFsckCleanReproducibleAndSmallerThanExt4() async throws {
        let tree = try await Fixtures.debian.tree(agentInit: true)
        let dir = try Fixtures.temporaryDirectory("erofs-z"); defer { FS.remove(dir) }
        try await ProcessRunner().capture(ToolCommand("tar", ["-C", tree.directory, "--numeric-owner", "-cf", dir + "/t.tar", "."]))
        var notes: [String: String] = [:]
        for (name, args) in [("lz4hc.erofs", [tree.directory]), ("again.erofs", [dir + "/t.tar"]),
                             ("lz4.erofs", [tree.directory, "--erofs-compression", "lz4"]),
                             ("none.erofs", [tree.directory, "--erofs-compression", "none"]),
                             ("ext4.img", [tree.directory, "--no-partition-table"])] {
            let r = try await Fixtures.rootfs(["image"] + args + ["-o", dir + "/" + name], environment: epochEnv)
            try #require(r.status == 0, "\(name): \(r.stderr)")
            notes[name] = r.stdout + r.stderr
        }
        // Two builds with SOURCE_DATE_EPOCH (from the directory and from a GNU tar of it): the same bytes.
        #expect(try bytes(dir + "/lz4hc.erofs") == bytes(dir + "/again.erofs"))
        for name in ["lz4hc.erofs", "lz4.erofs", "none.erofs"] {
            _ = try await check("fsck.erofs", [dir + "/" + name])
        }
        // The compressor is the one asked for, as the super block says.
        let lz4hcInfo = try await check("dump.erofs", [dir + "/lz4hc.erofs"])
        let noneInfo = try await check("dump.erofs", [dir + "/none.erofs"])
        // mkfs.erofs sets the lz4 "0padding" feature only when it compresses.
        #expect(lz4hcInfo.contains("0padding"), "\(lz4hcInfo)")
        #expect(!noneInfo.contains("0padding"), "\(noneInfo)")
        let sizes = ["lz4hc.erofs", "lz4.erofs", "none.erofs", "ext4.img"].map { ($0, FS.fileSize(dir + "/" + $0)) }
        print("MeasuredFilesystemTests: Debian tree: " + sizes.map { "\($0.0) \(formatBytes($0.1))" }.joined(separator: ", "))
        let size = Dictionary(uniqueKeysWithValues: sizes)
        #expect(size["lz4hc.erofs"]! < size["none.erofs"]! * 3 / 4, "lz4hc compresses: \(sizes) \(noneInfo.prefix(200))")
        #expect(size["lz4hc.erofs"]! <= size["lz4.erofs"]!, "\(sizes)")
        #expect(size["none.erofs"]! < size["ext4.img"]!, "\(sizes)")
        // The summary gives the erofs size beside ext4's.
        #expect(notes["lz4hc.erofs"]!.contains("erofs lz4hc, 4096-byte blocks") && notes["lz4hc.erofs"]!.contains("ext4 of the same tree"),
                "\(notes["lz4hc.erofs"]!)")
    }

    @Test func xfsOfTheDebianTreeIsCleanAndKeepsTheTarsOwners() async throws {
        let tree = try await Fixtures.debian.tree(agentInit: true)
        let dir = try Fixtures.temporaryDirectory("xfs-debian"); defer { FS.remove(dir) }
        try await ProcessRunner().capture(ToolCommand("tar", ["-C", tree.directory, "--numeric-owner", "-cf", dir + "/t.tar", "."]))
        let r = try await Fixtures.rootfs(["image", dir + "/t.tar", "-o", dir + "/x.img", "--fs", "xfs", "--no-partition-table"])
        try #require(r.status == 0, "\(r.stderr)")
        let repair = try await check("xfs_repair", ["-n", "-f", dir + "/x.img"])
        #expect(repair.contains("Phase 7"), "\(repair)")
        let shadow = try await check("xfs_db", ["-r", "-c", "path /etc/shadow", "-c", "print core.uid core.gid core.mode", dir + "/x.img"])
        #expect(shadow.contains("core.uid = 0") && shadow.contains("core.gid = 42"), "\(shadow)")
        let tmp = try await check("xfs_db", ["-r", "-c", "path /tmp", "-c", "print core.mode", dir + "/x.img"])
        #expect(tmp.contains("core.mode = 041777"), "\(tmp)")
        print("MeasuredFilesystemTests: Debian tree as xfs: \(formatBytes(FS.fileSize(dir + "/x.img"))) (sparse: 300 MiB at least)")
    }
}
