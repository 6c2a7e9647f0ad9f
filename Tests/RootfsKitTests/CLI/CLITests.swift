import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

@Suite struct CLITests {
    @Test func listShowsTheBuiltInDebian() async throws {
        let r = try await Fixtures.rootfs(["list"])
        #expect(r.status == 0)
        #expect(r.stdout.contains("debian"))
        #expect(r.stdout.contains("trixie"))
    }
}
