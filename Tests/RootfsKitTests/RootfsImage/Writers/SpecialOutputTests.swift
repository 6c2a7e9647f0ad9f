import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// The mount points below a test's directory (where the test mounts what it checks), for
/// "no mount was detached or left behind". The rest of the machine's mounts change with
/// other sessions' containers, so they are not compared.
func hostMountPoints(keeping directory: String) -> [[UInt8]] {
    FS.mountPoints(under: directory).map { Array($0.utf8) }
}

/// A Unix socket bound at `path` (the descriptor is closed; the socket file stays).
func makeSocketFile(_ path: String) -> Bool {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        for (i, b) in bytes.enumerated() { raw[i] = b }
    }
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    } == 0
}

/// The file type bits of `path`, not following a link (nil when missing).
func fileKind(_ path: String) -> mode_t? {
    var st = stat()
    return lstat(path, &st) == 0 ? st.st_mode & S_IFMT : nil
}

/// An existing output that is not a regular file (a device node, a FIFO, a socket, a
/// symlink to a canary) is refused before any work by every command, never replaced.
@Suite(.requires(.root, .busybox), .tags(.root, .busybox)) struct SpecialOutputTests {
    /// The special files of one test directory, by name, and a canary a symlink points to.
    struct Specials {
        let dir: String
        var canary: String { dir + "/canary" }
        var paths: [String] { ["null", "fifo", "socket", "link"].map { dir + "/" + $0 } }

        init(_ dir: String) throws {
            self.dir = dir
            try "canary\n".write(toFile: dir + "/canary", atomically: false, encoding: .utf8)
            #expect(mknod(dir + "/null", S_IFCHR | 0o666, dev_t((1 << 8) | 3)) == 0)
            #expect(mkfifo(dir + "/fifo", 0o644) == 0)
            #expect(makeSocketFile(dir + "/socket"))
            #expect(symlink(dir + "/canary", dir + "/link") == 0)
        }

        /// Each special file is still what it was, the canary unchanged, nothing else appeared.
        func expectUnchanged(besides: Set<String>, _ comment: Comment) throws {
            #expect(fileKind(dir + "/null") == S_IFCHR && fileKind(dir + "/fifo") == S_IFIFO, comment)
            #expect(fileKind(dir + "/socket") == S_IFSOCK && fileKind(dir + "/link") == S_IFLNK, comment)
            #expect(try String(contentsOfFile: canary, encoding: .utf8) == "canary\n", comment)
            let names = Set(try FileManager.default.contentsOfDirectory(atPath: dir))
            #expect(names == Set(["canary", "null", "fifo", "socket", "link"]).union(besides), comment)
        }
    }

    @Test func imageInitrdAndExtendRefuseSpecialOutputs() async throws {
        let dir = try Fixtures.temporaryDirectory("specialout"); defer { FS.remove(dir) }
        let outputs = dir + "/outputs"
        try FS.makeDirectories(outputs)
        let specials = try Specials(outputs)
        let tree = dir + "/tree"
        try FS.makeDirectories(tree + "/etc")
        try "x\n".write(toFile: tree + "/etc/hostname", atomically: false, encoding: .utf8)
        let tar = dir + "/tree.tar"
        _ = try await Fixtures.run("/bin/tar", ["-C", tree, "-cf", tar, "."])
        let mounts = hostMountPoints(keeping: dir)
        for output in specials.paths {
            for arguments in [["image", tar, "-o", output, "--format", "raw"], ["image", tar, "-o", output, "--format", "tar"],
                              ["initrd", tar, "-o", output], ["extend", tar, "--overlay", tree, "-o", output]] {
                let result = try await Fixtures.rootfs(arguments, environment: ["TMPDIR": dir])
                #expect(result.status == 1, "\(arguments): \(result.stderr)")
                #expect(result.stderr.contains("\(output) exists and is a"), "\(arguments): \(result.stderr)")
            }
        }
        // extend without -o replaces IMAGE: a symlink there is refused, its target untouched.
        let linkedTar = dir + "/linked.tar"
        #expect(symlink(tar, linkedTar) == 0)
        let before = try Data(contentsOf: URL(fileURLWithPath: tar))
        let extended = try await Fixtures.rootfs(["extend", linkedTar, "--overlay", tree], environment: ["TMPDIR": dir])
        #expect(extended.status == 1 && extended.stderr.contains("is a symbolic link"), "\(extended.stderr)")
        let after = try Data(contentsOf: URL(fileURLWithPath: tar))
        #expect(fileKind(linkedTar) == S_IFLNK && after == before)
        try specials.expectUnchanged(besides: [], "standalone commands")
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: dir)) == ["outputs", "tree", "tree.tar", "linked.tar"])
        #expect(hostMountPoints(keeping: dir) == mounts)
    }

    @Test func buildRefusesSpecialOutputsBeforeTheHookRuns() async throws {
        let dir = try Fixtures.temporaryDirectory("specialbuild"); defer { FS.remove(dir) }
        let outputs = dir + "/outputs"
        try FS.makeDirectories(outputs)
        let specials = try Specials(outputs)
        let marker = dir + "/hook-ran"
        let distros = try TestDistros.make(["bb": (TestDistros.busyboxConfig, TestDistros.busyboxLib.replacingOccurrences(
            of: "    for p in ${EXTRA_PKGS:-}", with: "    touch \"$MARKER\"\n    for p in ${EXTRA_PKGS:-}"))])
        defer { FS.remove(distros) }
        for output in specials.paths {
            for flags in [["--initrd", output], ["--image", output], ["-r", output], ["--initrd", dir + "/bb.img", "--lock", output]] {
                let result = try await Fixtures.rootfs(["build", "--distros-dir", distros, "bb", "--agent-init"] + flags,
                                                       environment: ["MARKER": marker, "TMPDIR": dir], workingDirectory: dir)
                #expect(result.status == 1, "\(flags): \(result.stderr)")
                #expect(result.stderr.contains("\(output) exists and is"), "\(flags): \(result.stderr)")
            }
        }
        // --format outputs into -O DIR, where the output's name is a FIFO.
        #expect(mkfifo(outputs + "/bb.tar", 0o644) == 0)
        let formatted = try await Fixtures.rootfs(["build", "--distros-dir", distros, "bb", "--agent-init", "--format", "tar", "-O", outputs],
                                                  environment: ["MARKER": marker, "TMPDIR": dir], workingDirectory: dir)
        #expect(formatted.status == 1 && formatted.stderr.contains("bb.tar exists and is a FIFO"), "\(formatted.stderr)")
        #expect(fileKind(outputs + "/bb.tar") == S_IFIFO)
        #expect(!FS.exists(marker), "the hook ran before the outputs were checked")
        try specials.expectUnchanged(besides: ["bb.tar"], "build")
    }
}

/// `rootfs image`, `initrd` and `extend` take the output lock `rootfs build` takes.
@Suite struct StandaloneOutputLockTests {
    @Test func aHeldOutputLockStopsImageInitrdAndExtend() async throws {
        let dir = try Fixtures.temporaryDirectory("standalonelock"); defer { FS.remove(dir) }
        try FS.makeDirectories(dir + "/tree/etc")
        try "x\n".write(toFile: dir + "/tree/etc/hostname", atomically: false, encoding: .utf8)
        _ = try await Fixtures.run("/bin/tar", ["-C", dir + "/tree", "-cf", dir + "/t.tar", "."])
        let before = try Data(contentsOf: URL(fileURLWithPath: dir + "/t.tar"))
        for (arguments, locked) in [(["image", dir + "/t.tar", "-o", dir + "/out.img"], dir + "/out.img"),
                                    (["initrd", dir + "/t.tar", "-o", dir + "/out.initrd"], dir + "/out.initrd"),
                                    (["extend", dir + "/t.tar", "--overlay", dir + "/tree"], dir + "/t.tar")] {
            let lock = try OutputLock(output: locked)
            let result = try await Fixtures.rootfs(arguments)
            #expect(result.status == 1, "\(arguments): \(result.stderr)")
            #expect(result.stderr.contains("another rootfs process (pid \(getpid())) is writing the output \(locked)"), "\(result.stderr)")
            withExtendedLifetime(lock) {}
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/t.tar")) == before)
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: dir)) == ["tree", "t.tar"])
    }
}
