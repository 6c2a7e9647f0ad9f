import Foundation
import Testing
@testable import RootfsSupport

/// `SHA256.hexDigest(ofFile:)` (every output's and cached tree's digest) takes libnettle when the
/// process has it: sha256sum is the independent judge of what it returns, at sizes around its
/// 1 MiB read buffer and for an empty file.
@Suite struct SHA256FileTests {
    @Test func aFilesDigestIsWhatSha256sumSays() async throws {
        #expect(NettleSHA256.shared != nil, "libnettle.so.8 should be in the process through libarchive")
        let dir = try Fixtures.temporaryDirectory("sha256-file")
        defer { FS.remove(dir) }
        var gen = TestBytes(seed: 41)
        for size in [0, 55, 64, (1 << 20) - 1, 1 << 20, (3 << 20) + 17] {
            let path = dir + "/f\(size)"
            try Data(gen.bytes(size)).write(to: URL(fileURLWithPath: path))
            let sum = try await Fixtures.run("/usr/bin/sha256sum", [path]).stdout.split(separator: " ").first.map(String.init)
            #expect(try SHA256.hexDigest(ofFile: path) == sum, "\(size) bytes")
        }
    }
}
