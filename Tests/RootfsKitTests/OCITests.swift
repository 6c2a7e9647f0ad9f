import Foundation
import Testing
import CArchive
@testable import RootfsImage
@testable import RootfsSupport

/// Container images as trees (oci:DIR[:TAG], docker-archive:FILE) and as outputs.
enum OCIFixtures {
    /// A tiny busybox guest: sh, cat and friends, /etc/os-release, and the names the
    /// image layers then delete (/etc/gone) and replace (/opt/replaced).
    static func busyboxTree(at root: String) throws {
        for dir in ["bin", "etc", "opt/replaced/sub"] { try FS.makeDirectories(root + "/" + dir) }
        try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: root + "/bin/busybox")
        for tool in ["sh", "rm", "mkdir", "ln", "chown", "cat", "echo", "chmod"] {
            try FileManager.default.createSymbolicLink(atPath: root + "/bin/" + tool, withDestinationPath: "busybox")
        }
        let files = ["etc/gone": "gone\n", "etc/keep": "keep\n", "opt/replaced/old": "old\n",
                     "opt/replaced/sub/deep": "deep\n", "etc/os-release": "ID=busybox\nNAME=\"rootfs OCI test\"\n"]
        for (path, text) in files { try text.write(toFile: root + "/" + path, atomically: false, encoding: .utf8) }
    }

    /// Runs a tool and requires it to succeed.
    @discardableResult
    static func run(_ tool: String, _ arguments: [String], workingDirectory: String? = nil) async throws -> String {
        let result = try await Fixtures.run("/usr/bin/env", [tool] + arguments, workingDirectory: workingDirectory)
        guard result.status == 0 else {
            throw RootfsError("\(tool) \(arguments.joined(separator: " ")) failed (\(result.status)): \(result.stderr)")
        }
        return result.stdout
    }

    /// One member of a hand-made layer.
    enum Member {
        case file(String, String)
        case directory(String)
        case symlink(String, String)
    }

    /// A layer tar with exactly these members (names as given: `../x` too).
    static func layerTar(_ members: [Member]) throws -> [UInt8] {
        let dir = try Fixtures.temporaryDirectory("oci-layer"); defer { FS.remove(dir) }
        let path = dir + "/layer.tar"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        defer { close(fd) }
        let archive = try ArchiveWriteHandle(format: .paxRestricted, compression: .none)
        try archive.open(fd: fd)
        let entry = ArchiveEntryHandle()
        for member in members {
            entry.clear()
            archive_entry_set_uid(entry.pointer, 0)
            archive_entry_set_gid(entry.pointer, 0)
            switch member {
            case .file(let name, let text):
                entry.setPath(Array(name.utf8))
                archive_entry_set_mode(entry.pointer, mode_t(FileType.reg | 0o644))
                archive_entry_set_size(entry.pointer, Int64(text.utf8.count))
                try archive.writeHeader(entry)
                try Array(text.utf8).withUnsafeBytes { try archive.writeData($0) }
            case .directory(let name):
                entry.setPath(Array(name.utf8))
                archive_entry_set_mode(entry.pointer, mode_t(0o040755))
                try archive.writeHeader(entry)
            case .symlink(let name, let target):
                entry.setPath(Array(name.utf8))
                archive_entry_set_mode(entry.pointer, mode_t(0o120777))
                entry.setSymlink(Array(target.utf8))
                try archive.writeHeader(entry)
            }
            try archive.finishEntry()
        }
        try archive.close()
        return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// An OCI layout of plain-tar layers, tagged `tag`; returns the layers' digests.
    @discardableResult
    static func layout(at dir: String, tag: String, layers: [[UInt8]]) throws -> [String] {
        try FS.makeDirectories(dir + "/blobs/sha256")
        func blob(_ bytes: [UInt8]) throws -> (String, Int64) {
            let hex = SHA256.hexDigest(of: bytes)
            try Data(bytes).write(to: URL(fileURLWithPath: dir + "/blobs/sha256/" + hex))
            return ("sha256:" + hex, Int64(bytes.count))
        }
        let layerDescriptors = try layers.map { bytes -> OCIDescriptor in
            let (digest, size) = try blob(bytes)
            return OCIDescriptor(mediaType: OCIMediaType.layerTar, digest: digest, size: size)
        }
        let config = OCIImageConfig(created: nil, architecture: "amd64", os: "linux", config: nil,
                                    rootfs: .init(type: "layers", diff_ids: layerDescriptors.map(\.digest)), history: nil)
        let (configDigest, configSize) = try blob(try OCIImageWriter.encode(config))
        let manifest = OCIManifest(schemaVersion: 2, mediaType: OCIMediaType.manifest,
                                   config: OCIDescriptor(mediaType: OCIMediaType.config, digest: configDigest, size: configSize),
                                   layers: layerDescriptors, annotations: nil)
        let (manifestDigest, manifestSize) = try blob(try OCIImageWriter.encode(manifest))
        let index = OCIIndex(schemaVersion: 2, mediaType: OCIMediaType.index, manifests: [
            OCIDescriptor(mediaType: OCIMediaType.manifest, digest: manifestDigest, size: manifestSize,
                          annotations: ["org.opencontainers.image.ref.name": tag]),
        ])
        try Data(try OCIImageWriter.encode(index)).write(to: URL(fileURLWithPath: dir + "/index.json"))
        try Data(#"{"imageLayoutVersion":"1.0.0"}"#.utf8).write(to: URL(fileURLWithPath: dir + "/oci-layout"))
        return layerDescriptors.map(\.digest)
    }
}

/// Images made by the real engine: a whiteout, an opaque directory, a hard link, owners.
@Suite(.serialized, .requires(.root, .docker, .busybox), .tags(.root, .docker, .busybox)) struct OCITreeSourceTests {
    @Test func layoutAndDockerArchiveGiveUmocisTree() async throws {
        let work = try Fixtures.temporaryDirectory("oci-source"); defer { FS.remove(work) }
        try OCIFixtures.busyboxTree(at: work + "/base")
        try FS.makeDirectories(work + "/context")
        try await OCIFixtures.run("tar", ["-C", work + "/base", "--numeric-owner", "--owner=0", "--group=0", "-cf", work + "/context/base.tar", "."])
        let dockerfile = """
            FROM scratch
            ADD base.tar /
            RUN rm /etc/gone && rm -rf /opt/replaced && mkdir /opt/replaced && echo new > /opt/replaced/new && chown 5:6 /opt/replaced/new && ln /etc/keep /etc/keep-link && chmod 4755 /etc/keep
            RUN mkdir -p /srv/data && echo x > /srv/data/x && chown -R 7:8 /srv
            """
        try dockerfile.write(toFile: work + "/context/Dockerfile", atomically: false, encoding: .utf8)
        let name = "rootfs-oci-source-test:\(getpid())"
        try await OCIFixtures.run("docker", ["build", "-q", "-t", name, work + "/context"])
        defer { _ = Fixtures.status("/usr/bin/env", ["docker", "rmi", "-f", name]) }
        try await OCIFixtures.run("skopeo", ["copy", "-q", "docker-daemon:" + name, "oci:" + work + "/layout:t1"])
        try await OCIFixtures.run("docker", ["save", "-o", work + "/saved.tar", name])
        // umoci as root keeps the owners (--rootless would map them all to the caller).
        try await OCIFixtures.run("umoci", ["unpack", "--image", work + "/layout:t1", work + "/bundle"])

        let fromUmoci = try await Fixtures.rootfs(["diff", "oci:" + work + "/layout:t1", work + "/bundle/rootfs"])
        #expect(fromUmoci.status == 0, "\(fromUmoci.stdout)\(fromUmoci.stderr)")
        let fromSave = try await Fixtures.rootfs(["diff", "docker-archive:" + work + "/saved.tar", "oci:" + work + "/layout"])
        #expect(fromSave.status == 0, "\(fromSave.stdout)\(fromSave.stderr)")
        // Against the first layer alone: the whiteout, the opaque directory and the new owners show.
        let fromBase = try await Fixtures.rootfs(["diff", "--ignore-mtime", "oci:" + work + "/layout:t1", work + "/context/base.tar"])
        #expect(fromBase.status == 1)
        for line in ["only in B: /etc/gone", "only in B: /opt/replaced/old", "only in B: /opt/replaced/sub", "only in A: /opt/replaced/new",
                     "only in A: /srv"] {
            #expect(fromBase.stdout.contains(line), "\(line) missing from:\n\(fromBase.stdout)")
        }
        #expect(!fromBase.stdout.contains("/bin/busybox"))

        // Every command taking a TREE takes the image: a tar of it keeps owners, modes and the hard link.
        let out = try await Fixtures.rootfs(["image", "docker-archive:" + work + "/saved.tar", "--format", "tar", "-o", work + "/out.tar"])
        #expect(out.status == 0, "\(out.stderr)")
        let entries = Dictionary(uniqueKeysWithValues: try ArchiveReader.list(work + "/out.tar").map { ($0.path, $0) })
        #expect(entries["opt/replaced/new"].map { "\($0.uid):\($0.gid)" } == "5:6")
        #expect(entries["srv/data/x"].map { "\($0.uid):\($0.gid)" } == "7:8")
        #expect(entries["etc/keep"]?.mode == FileType.reg | 0o4755)
        #expect(entries["etc/keep-link"]?.hardlink == "etc/keep")
        #expect(entries["etc/gone"] == nil)
    }
}

/// Hand-made layouts that must be refused, with the reason named.
@Suite struct OCIBadInputTests {
    @Test func aBlobThatDoesNotMatchItsDigestIsNamed() async throws {
        let work = try Fixtures.temporaryDirectory("oci-bad-digest"); defer { FS.remove(work) }
        let digests = try OCIFixtures.layout(at: work + "/layout", tag: "t", layers: [OCIFixtures.layerTar([.file("etc/hostname", "guest\n")])])
        let good = try await Fixtures.rootfs(["diff", "oci:" + work + "/layout:t", "oci:" + work + "/layout"])
        #expect(good.status == 0, "\(good.stderr)")
        // Same size, one byte changed: only the digest can tell.
        let blob = work + "/layout/blobs/sha256/" + digests[0].dropFirst(7)
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: blob)))
        bytes[512] ^= 0x20
        try Data(bytes).write(to: URL(fileURLWithPath: blob))
        let bad = try await Fixtures.rootfs(["diff", "oci:" + work + "/layout:t", "oci:" + work + "/layout"])
        #expect(bad.status == 2)
        #expect(bad.stderr.contains("does not match its digest") && bad.stderr.contains(digests[0]), "\(bad.stderr)")
    }

    @Test func aLayerMemberWithDotDotIsRefused() async throws {
        let work = try Fixtures.temporaryDirectory("oci-dotdot"); defer { FS.remove(work) }
        try OCIFixtures.layout(at: work + "/layout", tag: "t", layers: [OCIFixtures.layerTar([.file("etc/../../x", "escape\n")])])
        let result = try await Fixtures.rootfs(["image", "oci:" + work + "/layout:t", "--format", "tar", "-o", work + "/out.tar"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("'..'"), "\(result.stderr)")
        #expect(!FS.exists(work + "/out.tar") && !FS.exists(FS.parent(work) + "/x"))
    }

    @Test func aLowerLayersAbsoluteLinkIsNotFollowed() async throws {
        let work = try Fixtures.temporaryDirectory("oci-link"); defer { FS.remove(work) }
        try OCIFixtures.layout(at: work + "/layout", tag: "t", layers: [
            OCIFixtures.layerTar([.symlink("escape", "/tmp")]),
            OCIFixtures.layerTar([.file("escape/rootfs-oci-escaped", "escape\n")]),
        ])
        let result = try await Fixtures.rootfs(["image", "oci:" + work + "/layout:t", "--format", "tar", "-o", work + "/out.tar"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("which is no directory"), "\(result.stderr)")
        #expect(!FS.exists("/tmp/rootfs-oci-escaped"))
    }

    @Test func whiteoutsAndOpaqueDirectoriesApplyToLowerLayersOnly() async throws {
        let work = try Fixtures.temporaryDirectory("oci-whiteout"); defer { FS.remove(work) }
        try OCIFixtures.layout(at: work + "/layout", tag: "t", layers: [
            OCIFixtures.layerTar([.directory("etc"), .file("etc/a", "a"), .file("etc/b", "b"), .directory("opt"), .file("opt/old", "old"),
                                  .directory("opt/sub"), .file("opt/sub/deep", "deep")]),
            OCIFixtures.layerTar([.file("etc/.wh.a", ""), .file("etc/b", "b2"), .directory("opt"), .file("opt/.wh..wh..opq", ""),
                                  .file("opt/new", "new"), .file(".wh.missing", "")]),
        ])
        let out = try await Fixtures.rootfs(["image", "oci:" + work + "/layout:t", "--format", "tar", "-o", work + "/out.tar"])
        #expect(out.status == 0, "\(out.stderr)")
        let reader = try ArchiveReader(path: work + "/out.tar")
        var files: [String: String] = [:]
        var names: [String] = []
        while let (entry, data) = try reader.next(withData: true) {
            names.append(entry.path)
            if entry.fileType == FileType.reg { files[entry.path] = String(decoding: data, as: UTF8.self) }
        }
        #expect(files.keys.sorted() == ["etc/b", "opt/new"], "\(names)")
        #expect(!names.contains { $0.hasPrefix("opt/sub") }, "\(names)")
        #expect(files["etc/b"] == "b2")
    }

    @Test func aMissingTagListsTheTags() async throws {
        let work = try Fixtures.temporaryDirectory("oci-tag"); defer { FS.remove(work) }
        try OCIFixtures.layout(at: work + "/layout", tag: "present", layers: [OCIFixtures.layerTar([.file("a", "a")])])
        let result = try await Fixtures.rootfs(["size", "oci:" + work + "/layout:absent"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("no image tagged absent") && result.stderr.contains("present"), "\(result.stderr)")
    }

    @Test func anUnknownTransportListsTheKnownOnes() async throws {
        let result = try await Fixtures.rootfs(["size", "ocl:/nonexistent"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("unknown transport ocl:") && result.stderr.contains("oci:") && result.stderr.contains("docker-archive:"), "\(result.stderr)")
    }
}

/// The guest as an image: checked by skopeo, umoci and the real engine.
@Suite(.serialized, .requires(.root, .docker, .busybox), .tags(.root, .docker, .busybox)) struct OCIOutputTests {
    @Test func ociLayoutIsReproducibleAndSkopeoSeesOurDigest() async throws {
        let work = try Fixtures.temporaryDirectory("oci-out"); defer { FS.remove(work) }
        try OCIFixtures.busyboxTree(at: work + "/tree")
        let writer = OCIImageWriter(layout: .oci, compression: .gzip, epoch: 1_700_000_000, version: "1.2.3", revision: "abc123", reference: "guest:v1")
        let first = try writer.write(source: .directory(work + "/tree"), to: work + "/one")
        let second = try writer.write(source: .directory(work + "/tree"), to: work + "/two")
        #expect(first.manifestDigest == second.manifestDigest)
        var later = writer
        later.epoch = 1_800_000_000
        let third = try later.write(source: .directory(work + "/tree"), to: work + "/three")
        #expect(third.manifestDigest != first.manifestDigest)

        let inspect = try await OCIFixtures.run("skopeo", ["inspect", "oci:" + work + "/one:v1"])
        let json = try JSONSerialization.jsonObject(with: Data(inspect.utf8)) as? [String: Any]
        #expect(json?["Digest"] as? String == first.manifestDigest, "\(inspect)")
        #expect(json?["Architecture"] as? String == OCIArchitecture.host)
        #expect(json?["Created"] as? String == "2023-11-14T22:13:20Z")
        #expect((json?["Labels"] as? [String: String])?["org.opencontainers.image.version"] == "1.2.3")
        // A second reader of the layout: umoci's tree is ours (mtimes clamped to the epoch).
        try await OCIFixtures.run("umoci", ["unpack", "--image", work + "/one:v1", work + "/bundle"])
        let diff = try await Fixtures.rootfs(["diff", "--ignore-mtime", work + "/tree", work + "/bundle/rootfs"])
        #expect(diff.status == 0, "\(diff.stdout)\(diff.stderr)")
        let ours = try await Fixtures.rootfs(["diff", "oci:" + work + "/one", work + "/bundle/rootfs"])
        #expect(ours.status == 0, "\(ours.stdout)\(ours.stderr)")
    }

    @Test func dockerLoadsTheArchiveAndRunsIt() async throws {
        let work = try Fixtures.temporaryDirectory("oci-docker"); defer { FS.remove(work) }
        try OCIFixtures.busyboxTree(at: work + "/tree")
        let name = "rootfs-oci-output-test:\(getpid())"
        let result = try OCIImageWriter(layout: .dockerArchive, epoch: 1_700_000_000, reference: name)
            .write(source: .directory(work + "/tree"), to: work + "/image.tar")
        try await OCIFixtures.run("docker", ["load", "-i", work + "/image.tar"])
        defer { _ = Fixtures.status("/usr/bin/env", ["docker", "rmi", "-f", name]) }
        let id = try await OCIFixtures.run("docker", ["image", "inspect", "--format", "{{.Id}}", name])
        #expect(id.trimmingCharacters(in: .whitespacesAndNewlines) == result.configDigest)
        let osRelease = try await OCIFixtures.run("docker", ["run", "--rm", "--network", "none", name, "cat", "/etc/os-release"])
        #expect(osRelease.contains("ID=busybox"), "\(osRelease)")
        // Our own reader takes what we wrote.
        let back = try await Fixtures.rootfs(["diff", "--ignore-mtime", "docker-archive:" + work + "/image.tar", work + "/tree"])
        #expect(back.status == 0, "\(back.stdout)\(back.stderr)")
    }
}

/// KubeVirt's containerDisk: the disk under /disk/, checked by umoci and qemu-img.
@Suite(.requires(.root, .qemuImg, .busybox), .tags(.root, .qemuImg, .busybox)) struct ContainerDiskTests {
    @Test func theDiskIsUnderDiskOwnedByQemu() async throws {
        let work = try Fixtures.temporaryDirectory("oci-containerdisk"); defer { FS.remove(work) }
        try OCIFixtures.busyboxTree(at: work + "/tree")
        // `rootfs image` wants a bootable tree: an init and an agent (busybox stands in for both).
        for dir in ["sbin", "usr/bin"] { try FS.makeDirectories(work + "/tree/" + dir) }
        try FileManager.default.createSymbolicLink(atPath: work + "/tree/sbin/init", withDestinationPath: "../bin/busybox")
        try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: work + "/tree/usr/bin/rootfs-agent")
        let image = try await Fixtures.rootfs(["image", work + "/tree", "--format", "qcow2", "-o", work + "/guest.qcow2"])
        #expect(image.status == 0, "\(image.stderr)")
        let first = try ContainerDiskWriter(epoch: 1_700_000_000, reference: "guest:disk").write(disk: work + "/guest.qcow2", to: work + "/layout")
        let again = try ContainerDiskWriter(epoch: 1_700_000_000, reference: "guest:disk").write(disk: work + "/guest.qcow2", to: work + "/layout2")
        #expect(first.manifestDigest == again.manifestDigest)
        try await OCIFixtures.run("umoci", ["unpack", "--image", work + "/layout:disk", work + "/bundle"])
        let disk = work + "/bundle/rootfs/disk/disk.qcow2"
        try await OCIFixtures.run("qemu-img", ["check", "-f", "qcow2", disk])
        try await OCIFixtures.run("cmp", [disk, work + "/guest.qcow2"])
        var st = stat()
        #expect(stat(disk, &st) == 0 && st.st_uid == 107 && st.st_gid == 107 && st.st_mode & 0o7777 == 0o440)
        let names = try FileManager.default.contentsOfDirectory(atPath: work + "/bundle/rootfs")
        #expect(names == ["disk"], "\(names)")
    }
}
