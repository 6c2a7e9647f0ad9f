import Foundation
import Testing
@testable import RootfsImage
@testable import RootfsSupport

/// Overlays holding a path longer than PATH_MAX (4096 bytes): the applier creates every
/// entry relative to its parent's descriptor, so the path comes out whole in a tar
/// (GNU tar -t lists it) and in an ext4 image (e2fsck clean, Ext4Reader finds it).
@Suite struct LongPathOverlayTests {
    /// 24 directories of 200 bytes: a path of 4,800+ bytes, each name under 255.
    static let components: [[UInt8]] = (0..<24).map { i in Array(String(format: "%02d", i).utf8) + [UInt8](repeating: UInt8(ascii: "d"), count: 198) }
    static var deepPath: [UInt8] { Array(components.joined(separator: [UInt8(ascii: "/")])) + Array("/leaf".utf8) }

    /// Makes the deep directories and the leaf file below `root`, name by name (no host path of it exists).
    static func makeDeep(_ root: String) throws {
        var fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw RootfsError("cannot open \(root)") }
        for name in components {
            guard name.withCString({ mkdirat(fd, $0, 0o755) }) == 0 else { throw RootfsError("mkdirat: \(FS.errnoText())") }
            let next = name.withCString { openat(fd, $0, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
            close(fd)
            guard next >= 0 else { throw RootfsError("openat: \(FS.errnoText())") }
            fd = next
        }
        defer { close(fd) }
        let file = openat(fd, "leaf", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard file >= 0 else { throw RootfsError("cannot create the leaf: \(FS.errnoText())") }
        _ = write(file, "deep\n", 5)
        close(file)
    }

    @Test func anOverlayPathLongerThanPathMaxComesOutWhole() async throws {
        let dir = try Fixtures.temporaryDirectory("longpath")
        defer { FS.remove(dir) }
        #expect(Self.deepPath.count > Int(PATH_MAX))
        let tree = dir + "/tree", ov = dir + "/ov"
        for d in [tree + "/sbin", tree + "/usr/bin", ov] { try FS.makeDirectories(d) }
        for exe in ["/sbin/init", "/usr/bin/rootfs-agent"] {
            try "#!/bin/sh\n".write(toFile: tree + exe, atomically: false, encoding: .utf8)
            chmod(tree + exe, 0o755)
        }
        try Self.makeDeep(ov)
        let deepTar = dir + "/deep.tar"
        _ = try await Fixtures.run("/bin/tar", ["-C", ov, "-cf", deepTar, "."])
        let expected = String(decoding: Self.deepPath, as: UTF8.self)

        // `rootfs image` lays a directory overlay and a tar overlay over a tree, into a tar.
        for (i, overlay) in [ov, deepTar].enumerated() {
            let out = dir + "/out\(i).tar"
            let r = try await Fixtures.rootfs(["image", tree, "--overlay", overlay, "-o", out, "--format", "tar"])
            #expect(r.status == 0, "\(overlay): \(r.stderr)")
            let listed = try await Fixtures.run("/bin/tar", ["-tf", out])
            #expect(listed.stdout.split(separator: "\n").contains { $0 == expected || $0 == "./" + expected }, "\(overlay): not listed whole")
        }

        // `rootfs extend` of an ext4 image with the directory overlay.
        let made = try await Fixtures.rootfs(["image", tree, "-o", dir + "/base.img"])
        #expect(made.status == 0, "\(made.stderr)")
        let r = try await Fixtures.rootfs(["extend", dir + "/base.img", "--overlay", ov, "-o", dir + "/new.img"])
        #expect(r.status == 0, "\(r.stderr)")
        let fsck = try await Fixtures.run("/sbin/e2fsck", ["-fn", dir + "/new.img?offset=1048576"])
        #expect(fsck.status == 0, "\(fsck.stdout)")
        var leaf: TreeItem?
        try TreeSource.ext4(path: dir + "/new.img", offset: 1 << 20).walk { if $0.path == Self.deepPath { leaf = $0 } }
        #expect(leaf?.size == 5, "the deep file is in the image")
        // Nothing of the work directories is left beside the outputs.
        let left = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        #expect(left == ["base.img", "deep.tar", "new.img", "out0.tar", "out1.tar", "ov", "tree"], "\(left)")
    }
}
