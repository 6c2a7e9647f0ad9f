import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

@Suite struct BinaryCodingTests {
    @Test func encoderAndDecoderAgreeInBothByteOrders() throws {
        for order in [ByteOrder.little, .big] {
            var e = BinaryEncoder(order: order)
            e.append(UInt16(0x1234)); e.append(UInt32(0xdead_beef)); e.append(UInt64(0x0102_0304_0506_0708))
            e.put(UInt16(0xabcd), at: 20)
            let d = BinaryDecoder(e.bytes, order: order, what: "test")
            #expect(try d.u16(0) == 0x1234 && d.u32(2) == 0xdead_beef && d.u64(6) == 0x0102_0304_0506_0708 && d.u16(20) == 0xabcd)
            #expect(e.bytes[0] == (order == .little ? 0x34 : 0x12))
        }
    }

    @Test func shortOrHostileOffsetsAreErrorsNotTraps() {
        let d = BinaryDecoder([1, 2, 3], what: "a tiny header")
        #expect(throws: RootfsError.self) { try d.u32(0) }
        #expect(throws: RootfsError.self) { try d.u16(Int.max) }
        #expect(throws: RootfsError.self) { try d.bytes(at: -1, count: 2) }
        #expect(throws: RootfsError.self) { try Checked.multiply(Int64.max / 2, 3, "a size") }
        #expect(throws: RootfsError.self) { try Checked.convert(UInt64.max, to: Int64.self, "an LBA") }
    }

    @Test func ownedDescriptorWritesEverythingAndReadsBack() throws {
        let dir = try Fixtures.temporaryDirectory("fd"); defer { FS.remove(dir) }
        var fd = try OwnedFileDescriptor(path: dir + "/f", flags: O_RDWR | O_CREAT | O_EXCL)
        let data = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        try fd.writeAll(data)
        try fd.writeAll([9, 9], at: Int64(data.count) + 10)
        #expect(try fd.size() == Int64(data.count) + 12)
        #expect(try fd.read(count: 4, at: 1000) == Array(data[1000..<1004]))
        #expect(try fd.read(count: 8, at: Int64(data.count) + 8) == [0, 0, 9, 9])
        try fd.close()
        #expect(throws: RootfsError.self) { try fd.writeAll([1]) }
    }
}

@Suite struct RequirementProbeTests {
    /// On this project's machines (and CI's) everything is there; the probes must say so,
    /// or the traits would skip real tests on a developer's machine.
    @Test(.enabled(if: Need.inCI)) func everyNeedIsMetInCI() {
        for need in Need.allCases { #expect(need.isMet, "\(need) is missing") }
    }
}
