import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

@Suite struct ToolCommandTests {
    @Test func quotesOnlyForDisplay() {
        let c = ToolCommand("mmdebstrap", ["--include=a b", "it's"], environment: ["X": "1 2"])
        #expect(c.displayString == "X='1 2' mmdebstrap '--include=a b' 'it'\\''s'")
    }
}
