import Foundation
import Testing
@testable import RootfsImage
@testable import RootfsSupport

/// Crafted partition tables through `rootfs boot` and `rootfs extend`: a clear
/// error before QEMU starts or anything is written, never a trap.
@Suite struct PartitionProbeTests {
    static func disk(sectors: Int = 64, _ edit: (inout [UInt8]) -> Void) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: sectors * 512)
        bytes[510] = 0x55; bytes[511] = 0xaa
        edit(&bytes)
        return bytes
    }
    static func put<T: FixedWidthInteger>(_ bytes: inout [UInt8], _ offset: Int, _ value: T) {
        withUnsafeBytes(of: value.littleEndian) { for (i, b) in $0.enumerated() { bytes[offset + i] = b } }
    }
    static func gpt(entriesLBA: UInt64, count: UInt32, size: UInt32, first: UInt64 = 34, last: UInt64 = 40) -> [UInt8] {
        disk { b in
            b[450] = 0xee
            b.replaceSubrange(512..<520, with: Array("EFI PART".utf8))
            put(&b, 512 + 72, entriesLBA); put(&b, 512 + 80, count); put(&b, 512 + 84, size)
            put(&b, 1024 + 32, first); put(&b, 1024 + 40, last)
        }
    }

    static let cases: [(name: String, bytes: [UInt8], message: String)] = [
        ("entries-at-absurd-lba", gpt(entriesLBA: .max, count: 128, size: 128), "beyond any disk"),
        ("entries-beyond-end", gpt(entriesLBA: 1 << 40, count: 128, size: 128), "beyond the end of the file"),
        ("entry-size-zero", gpt(entriesLBA: 2, count: 0xffff_ffff, size: 0), "entry size of 0"),
        ("partition-at-absurd-lba", gpt(entriesLBA: 2, count: 0xffff_ffff, size: 128, first: .max - 1, last: .max), "beyond any disk"),
        ("mbr-beyond-end", disk { put(&$0, 446 + 8, UInt32.max); put(&$0, 446 + 12, UInt32.max) }, "beyond the end of the file"),
    ]

    @Test func craftedTablesAreClearErrorsInBootAndExtend() async throws {
        let dir = try Fixtures.temporaryDirectory("partprobe"); defer { FS.remove(dir) }
        try Data("k".utf8).write(to: URL(fileURLWithPath: dir + "/kernel"))
        try FileManager.default.createDirectory(atPath: dir + "/overlay/etc", withIntermediateDirectories: true)
        try Data("x".utf8).write(to: URL(fileURLWithPath: dir + "/overlay/etc/x"))
        for (name, bytes, message) in Self.cases {
            let path = dir + "/\(name).img"
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            let boot = try await Fixtures.rootfs(["boot", path, "--kernel", dir + "/kernel", "--accel", "tcg", "--", "true"],
                                                 environment: ["TMPDIR": dir])
            #expect(boot.status == 125, "\(name): \(boot.stderr)")
            #expect(boot.stderr.contains(message) && !boot.stderr.contains("booting"), "\(name): \(boot.stderr)")
            let extend = try await Fixtures.rootfs(["extend", path, "--overlay", dir + "/overlay", "-o", dir + "/out.img"],
                                                   environment: ["TMPDIR": dir])
            #expect(extend.status == 1, "\(name): \(extend.stderr)")
            #expect(extend.stderr.contains(message), "\(name): \(extend.stderr)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(bytes))
        }
        // Nothing but what the test wrote: no output, no temporaries.
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: dir)) == Set(["kernel", "overlay"] + Self.cases.map { "\($0.name).img" }))
    }

    @Test func aGoodTableStillGivesTheFirstPartition() throws {
        let bytes = Self.gpt(entriesLBA: 2, count: 128, size: 128, first: 34, last: 63)
        let found = try PartitionProbe.probe(what: "x", size: Int64(bytes.count)) { offset, count in
            Array(bytes[Int(offset)..<min(bytes.count, Int(offset) + count)])
        }
        #expect(found == PartitionProbe.Found(table: .gpt, firstPartitionOffset: 34 * 512))
    }
}
