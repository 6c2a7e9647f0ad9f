import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// The formats the helpers wrote as library writers, through the real CLI:
/// each judged by a second tool (qemu-img, skopeo).
@Suite(.requires(.root), .tags(.root)) struct NewFormatsCLITests {
    static func tinyTree(_ dir: String) throws -> String {
        let tree = dir + "/tree"
        for d in ["/sbin", "/usr/bin", "/etc"] { try FS.makeDirectories(tree + d) }
        for exe in ["/sbin/init", "/usr/bin/rootfs-agent"] {
            try "#!/bin/sh\n".write(toFile: tree + exe, atomically: false, encoding: .utf8)
            chmod(tree + exe, 0o755)
        }
        try "ID=tiny\n".write(toFile: tree + "/etc/os-release", atomically: false, encoding: .utf8)
        return tree
    }

    @Test func vhdxAndDynamicVHDAreWrittenAndQemuImgReadsTheSameDiskBack() async throws {
        let dir = try Fixtures.temporaryDirectory("new-formats"); defer { FS.remove(dir) }
        let tree = try Self.tinyTree(dir)
        let env = ["SOURCE_DATE_EPOCH": "1700000000"]
        for args in [["-o", dir + "/d.img"], ["-o", dir + "/d.vhdx"], ["-o", dir + "/f.vhdx", "--vhdx-fixed"],
                     ["--format", "dynamic-vhd", "-o", dir + "/d.vhd"]] {
            let r = try await Fixtures.rootfs(["image", tree] + args, environment: env)
            #expect(r.status == 0, "\(args): \(r.stderr)")
        }
        for (file, format) in [("d.vhdx", "vhdx"), ("f.vhdx", "vhdx"), ("d.vhd", "vpc")] {
            // qemu-img checks vhdx; for vpc it has no check, and `info` must read it as a vpc image.
            let check = try await Fixtures.run("/usr/bin/qemu-img", [format == "vpc" ? "info" : "check", "-f", format, dir + "/" + file])
            #expect(check.status == 0, "\(file): \(check.stdout)\(check.stderr)")
            let back = try await Fixtures.run("/usr/bin/qemu-img", ["convert", "-f", format, "-O", "raw", dir + "/" + file, dir + "/back.raw"])
            #expect(back.status == 0, "\(back.stderr)")
            let same = try await Fixtures.run("/usr/bin/cmp", [dir + "/d.img", dir + "/back.raw"])
            #expect(same.status == 0, "\(file) does not convert back to the raw disk: \(same.stdout)")
        }
        let fixed = FS.fileSize(dir + "/f.vhdx"), dynamic = FS.fileSize(dir + "/d.vhdx")
        #expect(fixed > dynamic, "fixed \(fixed) <= dynamic \(dynamic)")
        // --vhdx-fixed on another format is refused before anything is written.
        let refused = try await Fixtures.rootfs(["image", tree, "-o", dir + "/x.img", "--vhdx-fixed"])
        #expect(refused.status != 0 && refused.stderr.contains("--vhdx-fixed applies to vhdx"), "\(refused.stderr)")
        #expect(!FS.exists(dir + "/x.img"))
    }

    @Test(.requires(.docker), .tags(.docker)) func ociOutputIsAnImageSkopeoReadsAndBuildsReportItsDigest() async throws {
        let dir = try Fixtures.temporaryDirectory("new-formats-oci"); defer { FS.remove(dir) }
        let tree = try Self.tinyTree(dir)
        let env = ["SOURCE_DATE_EPOCH": "1700000000"]
        for name in ["a", "b"] {
            let r = try await Fixtures.rootfs(["image", tree, "--format", "oci", "-o", dir + "/\(name)-oci"], environment: env)
            #expect(r.status == 0, "\(r.stderr)")
        }
        let inspect = try await Fixtures.run("/usr/bin/skopeo", ["inspect", "oci:\(dir)/a-oci:latest"])
        #expect(inspect.status == 0, "\(inspect.stderr)")
        let a = try String(contentsOfFile: dir + "/a-oci/index.json", encoding: .utf8)
        // skopeo digests the manifest it read; the index names the same digest, and the epoch is the creation time.
        let digest = try #require(a.range(of: #"sha256:[0-9a-f]{64}"#, options: .regularExpression).map { String(a[$0]) })
        #expect(inspect.stdout.contains("\"Digest\": \"\(digest)\""), "\(inspect.stdout)")
        #expect(inspect.stdout.contains("2023-11-14T22:13:20Z"), "\(inspect.stdout)")
        let b = try String(contentsOfFile: dir + "/b-oci/index.json", encoding: .utf8)
        #expect(a == b, "two writes with the same epoch differ")
        let archive = try await Fixtures.rootfs(["image", tree, "-o", dir + "/t.docker.tar"], environment: env)
        #expect(archive.status == 0, "\(archive.stderr)")
        let listed = try await Fixtures.run("/usr/bin/tar", ["-tf", dir + "/t.docker.tar"])
        #expect(listed.stdout.contains("manifest.json"), "\(listed.stdout)")
    }
}
