import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

private let epoch = 1_700_000_000

private func sha(_ path: String) throws -> String { try SHA256.hexDigest(ofFile: path) }

/// Writes a small tree by hand: files, a hard link, links, an empty dir, a setuid file.
private func makeTree(_ root: String, reversed: Bool) throws {
    var steps: [() throws -> Void] = []
    try FS.makeDirectories(root)
    let dirs = ["etc", "usr/bin", "usr/lib/x", "var/empty"]
    let files: [(String, String, mode_t)] = [("etc/os-release", "NAME=test\n", 0o644), ("etc/shadow", "root:*:1::::::\n", 0o640),
                                             ("usr/bin/tool", String(repeating: "binary", count: 3000), 0o4755),
                                             ("usr/lib/x/a", "a", 0o644), ("usr/lib/x/b", "b", 0o600), ("usr/lib/x/c", "c", 0o644)]
    for d in dirs { steps.append { try FS.makeDirectories(root + "/" + d) } }
    for (path, text, mode) in files {
        steps.append {
            try text.write(toFile: root + "/" + path, atomically: false, encoding: .utf8)
            chmod(root + "/" + path, mode)
        }
    }
    steps.append { symlink("../lib/x/a", root + "/usr/bin/rel") }
    steps.append { symlink("/etc/os-release", root + "/usr/bin/abs") }
    // Directories first either way; within, creation order differs (and so inode numbers).
    let ordered = Array(steps.prefix(dirs.count)) + (reversed ? steps.dropFirst(dirs.count).reversed() : Array(steps.dropFirst(dirs.count)))
    for s in ordered { try s() }
    link(root + "/usr/lib/x/a", root + "/usr/lib/x/hard")
}

/// The writers give the same bytes whatever the host's file times and inode
/// order; `rootfs diff` explains differences entry by entry.
@Suite(.requires(.busybox), .tags(.busybox)) struct ReproducibilityTests {
    @Test func writersIgnoreHostTimesAndInodeOrder() async throws {
        let dir = try Fixtures.temporaryDirectory("repro-writers")
        defer { FS.remove(dir) }
        try makeTree(dir + "/a", reversed: false)
        // A second later: other ctimes; the other creation order: other inode numbers.
        try await Task.sleep(for: .milliseconds(1100))
        try makeTree(dir + "/b", reversed: true)
        // Touch everything in b (mtime after the epoch) and read a file (atime).
        let now = [timespec(tv_sec: time(nil), tv_nsec: 123), timespec(tv_sec: time(nil) + 50, tv_nsec: 456)]
        try TreeWalker(root: dir + "/b").walk { entry in
            var t = now
            utimensat(AT_FDCWD, dir + "/b/" + (entry.path == [46] ? "" : entry.pathString), &t, AT_SYMLINK_NOFOLLOW)
        }
        var ino = stat(), ino2 = stat()
        stat(dir + "/a/usr/lib/x/c", &ino); stat(dir + "/b/usr/lib/x/c", &ino2)
        #expect(ino.st_ctim.tv_sec != ino2.st_ctim.tv_sec, "the test needs different ctimes")
        for side in ["a", "b"] {
            let source = TreeSource.directory(dir + "/" + side)
            var options = ImageOptions()
            options.epoch = epoch
            options.compression = .gzip
            let writer = ImageWriter(options: options)
            for format in [OutputFormat.tar, .initrd, .raw] {
                _ = try await writer.write(format, source: source, to: dir + "/\(side)\(format.fileExtension)")
            }
        }
        for ext in [".tar", ".initrd", ".img"] {
            #expect(try sha(dir + "/a" + ext) == sha(dir + "/b" + ext), "\(ext) differs")
        }
        // The ext4 times are the epoch's, not the host's.
        let stat = try await ProcessRunner().capture(ToolCommand("debugfs", ["-R", "stat /usr/lib/x/c", dir + "/b.img?offset=1048576"])).standardOutput
        for field in ["ctime", "atime", "mtime", "crtime"] {
            #expect(stat.contains("\(field): 0x\(String(epoch, radix: 16)):00000000"), "\(field) in \(stat)")
        }
    }

    @Test func diffSaysIdenticalOrListsEachDifference() async throws {
        let dir = try Fixtures.temporaryDirectory("repro-diff")
        defer { FS.remove(dir) }
        try makeTree(dir + "/a", reversed: false)
        try makeTree(dir + "/b", reversed: true)
        let writer = ImageWriter(options: { var o = ImageOptions(); o.epoch = epoch; return o }())
        _ = try await writer.write(.tar, source: .directory(dir + "/a"), to: dir + "/a.tar")
        _ = try await writer.write(.initrd, source: .directory(dir + "/b"), to: dir + "/b.initrd")

        // Same tree: a directory against a tar, ignoring the host mtimes the tar clamped.
        let same = try await Fixtures.rootfs(["diff", "--ignore-mtime", dir + "/b", dir + "/a.tar"])
        #expect(same.status == 0, "\(same.stdout) \(same.stderr)")
        #expect(same.stdout.isEmpty)

        // Now break it in every way diff reports.
        let c = dir + "/b"
        try "changed\n".write(toFile: c + "/etc/os-release", atomically: false, encoding: .utf8)
        chmod(c + "/usr/lib/x/b", 0o644)
        unlink(c + "/usr/bin/rel"); symlink("../lib/x/b", c + "/usr/bin/rel")
        unlink(c + "/usr/lib/x/c")
        try "new".write(toFile: c + "/etc/hostname", atomically: false, encoding: .utf8)
        try "x".write(toFile: c + "/etc/na\nme", atomically: false, encoding: .utf8)
        let r = try await Fixtures.rootfs(["diff", "--ignore-mtime", dir + "/a.tar", c])
        #expect(r.status == 1, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.contains { $0.hasPrefix("changed: /etc/os-release:") && $0.contains("size: 10 -> 8") && $0.contains("content: sha256") })
        #expect(lines.contains("changed: /usr/lib/x/b: mode: 0600 -> 0644"))
        #expect(lines.contains("changed: /usr/bin/rel: link target: \"../lib/x/a\" -> \"../lib/x/b\""))
        #expect(lines.contains("only in A: /usr/lib/x/c (file)"))
        #expect(lines.contains("only in B: /etc/hostname (file)"))
        #expect(lines.contains("only in B: /etc/na\\nme (file)"))
        // An initrd is a tree too; a missing input is an error (2), not a difference.
        let initrd = try await Fixtures.rootfs(["diff", "--ignore-mtime", dir + "/a.tar", dir + "/b.initrd"])
        #expect(initrd.status == 1)
        #expect(initrd.stdout.contains("only in B: /init (symlink)"))
        let missing = try await Fixtures.rootfs(["diff", dir + "/a.tar", dir + "/nope"])
        #expect(missing.status == 2 && missing.stderr.contains("B \(dir)/nope does not exist"))
    }

    @Test func rootlessPlanKeepsTheTreeAsATarAndRefusesADirectory() async throws {
        let distros = try TestDistros.make(["bb": (TestDistros.busyboxConfig, TestDistros.busyboxLib)])
        defer { FS.remove(distros) }
        let dir = try Fixtures.temporaryDirectory("rootless-plan")
        defer { FS.remove(dir) }
        var options = BuildOptions(distro: "bb")
        options.distrosDirs = [distros]
        options.buildDirectory = dir + "/build"
        options.agentPath = Fixtures.agentBinary
        options.transport = .tar
        let builder = Builder(console: Console(level: .quiet))
        let plan = try await builder.plan(options)
        #expect(!plan.keepRootfs)
        #expect(plan.outputs.contains(FormatOutput(format: .tar, path: dir + "/build/bb.tar")))
        #expect(plan.summary.contains { $0.contains("tree: a tar (rootless") })
        options.rootfsDir = dir + "/rootfs"
        // The plan collects the problem; running it refuses before the hook (Preflight).
        let refused = try await builder.plan(options)
        #expect(refused.problems.contains { $0.message.contains("needs root") })
        await #expect { _ = try await builder.run(refused) } throws: { error in
            "\(error)".contains("needs root") && "\(error)".contains("--format tar")
        }
        #expect(!FS.exists(dir + "/rootfs"))
        options.dryRun = true
        let dry = try await builder.plan(options)
        #expect(dry.problems.contains { $0.message.contains("needs root") })
    }
}
