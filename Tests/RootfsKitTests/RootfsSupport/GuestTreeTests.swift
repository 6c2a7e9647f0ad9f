import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

@Suite struct GuestTreeTests {
    func tree() throws -> String {
        let root = try Fixtures.temporaryDirectory("tree")
        try FS.makeDirectories(root + "/usr/lib/systemd")
        try FS.makeDirectories(root + "/usr/sbin")
        try "x".write(toFile: root + "/usr/lib/systemd/systemd", atomically: true, encoding: .utf8)
        chmod(root + "/usr/lib/systemd/systemd", 0o755)
        symlink("usr/sbin", root + "/sbin")                      // merged /usr, relative
        symlink("/lib/systemd/systemd", root + "/usr/sbin/init")  // absolute, through /lib
        symlink("usr/lib", root + "/lib")
        return root
    }

    @Test func absoluteLinksResolveInsideTheGuest() throws {
        let root = try tree()
        defer { FS.remove(root) }
        let guest = GuestTree(root: root)
        #expect(guest.resolve("/sbin/init") == .found(hostPath: root + "/usr/lib/systemd/systemd",
                                                        guestPath: "/usr/lib/systemd/systemd"))
        #expect(RootfsChecker(tree: guest).problems(agentInit: false, agentNames: []).filter { $0.contains("init") }.isEmpty)
    }

    @Test func aLinkToAHostOnlyFileIsMissing() throws {
        let root = try tree()
        defer { FS.remove(root) }
        // /bin/sh exists on the host, not in this guest.
        unlink(root + "/usr/sbin/init")
        symlink("/bin/sh", root + "/usr/sbin/init")
        #expect(FS.exists("/bin/sh"))
        let guest = GuestTree(root: root)
        #expect(guest.resolve("/sbin/init") == .missing(guestPath: "/bin"))
        let problems = RootfsChecker(tree: guest).problems(agentInit: false, agentNames: ["rootfs-agent"])
        #expect(problems.contains { $0.contains("/sbin/init points to /bin, which does not exist inside the rootfs") })
        #expect(problems.contains { $0.contains("the agent is missing") })
    }

    @Test func dotDotStopsAtTheRootAndLoopsAreCaught() throws {
        let root = try tree()
        defer { FS.remove(root) }
        symlink("../../../../usr/lib/systemd/systemd", root + "/escape")
        symlink("loop2", root + "/loop1")
        symlink("loop1", root + "/loop2")
        let guest = GuestTree(root: root)
        #expect(guest.hostPath(resolving: "/escape") == root + "/usr/lib/systemd/systemd")
        #expect(guest.resolve("/loop1") == .loop)
    }

    @Test func creatingThroughAnAbsoluteDirectoryLinkStaysInside() throws {
        let root = try tree()
        let outside = try Fixtures.temporaryDirectory("outside")
        defer { FS.remove(root); FS.remove(outside) }
        // /etc in the guest is an absolute link to a host directory's path.
        symlink(outside, root + "/etc")
        let installer = AgentInstaller(tree: GuestTree(root: root))
        try installer.writeFile("/etc/marker", contents: Array("guest".utf8), mode: 0o644)
        #expect(try FileManager.default.contentsOfDirectory(atPath: outside).isEmpty)
        #expect(FS.isRegularFile(root + outside + "/marker"))
    }
}

@Suite(.requires(.root), .tags(.root)) struct RemoveTestsRequiringRoot {
    @Test func removeDetachesMountsInsideATreeInsteadOfDeletingThroughThem() throws {
        let outside = try Fixtures.temporaryDirectory("host-side")
        let tree = try Fixtures.temporaryDirectory("tree-with-mount")
        defer { FS.remove(outside) }
        try "keep".write(toFile: outside + "/precious", atomically: true, encoding: .utf8)
        try FS.makeDirectories(tree + "/dev")
        try ToolCommandSync.run(["mount", "--bind", outside, tree + "/dev"])
        #expect(FS.mountPoints(under: tree) == [tree + "/dev"])
        FS.remove(tree)
        #expect(!FS.exists(tree))
        #expect(try String(contentsOfFile: outside + "/precious", encoding: .utf8) == "keep")
    }

    @Test func aMountPastMountinfosFirstPageIsSeen() throws {
        // /proc/self/mountinfo reads as size 0; a reader that trusted the size saw one
        // page, and `remove` deleted through a mount listed further down (CI had Docker's).
        let filler = try Fixtures.temporaryDirectory("mount-filler")
        let outside = try Fixtures.temporaryDirectory("host-side")
        let tree = try Fixtures.temporaryDirectory("tree-late-mount")
        defer { FS.remove(filler); FS.remove(outside) }
        // Tmpfs mounts until the table is past two pages, however many mounts the machine has already.
        var mounted = 0
        var table: [UInt8] = []
        while mounted < 512 {
            table = try OwnedFileDescriptor(path: "/proc/self/mountinfo", flags: O_RDONLY).readToEnd(limit: 64 << 20)
            if table.count > 8192 { break }
            try FS.makeDirectories(filler + "/\(mounted)")
            try ToolCommandSync.run(["mount", "-t", "tmpfs", "-o", "size=64k", "filler", filler + "/\(mounted)"])
            mounted += 1
        }
        #expect(table.count > 8192, "\(table.count) bytes")
        try "keep".write(toFile: outside + "/precious", atomically: true, encoding: .utf8)
        try FS.makeDirectories(tree + "/proc")
        try ToolCommandSync.run(["mount", "--bind", outside, tree + "/proc"])
        #expect(FS.mountPoints(under: tree) == [tree + "/proc"])
        FS.remove(tree)
        #expect(!FS.exists(tree))
        #expect(try String(contentsOfFile: outside + "/precious", encoding: .utf8) == "keep")
        #expect(FS.mountPoints(under: filler).count == mounted)
    }

    @Test func mountinfoEscapesAreDecoded() {
        #expect(FS.unescapeMountField(Array(#"/tmp/a\040b\011c\134d"#.utf8)) == Array("/tmp/a b\tc\\d".utf8))
    }
}
