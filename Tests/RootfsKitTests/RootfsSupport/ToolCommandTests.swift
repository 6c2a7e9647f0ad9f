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

@Suite struct ProcessStatusTests {
    /// A failing tool's status is a value: compared as one, printed as before.
    @Test func aToolsExitIsAValue() async throws {
        do {
            _ = try await ProcessRunner().capture(ToolCommand("sh", ["-c", "exit 3"]))
            Issue.record("sh -c 'exit 3' did not fail")
        } catch let failure as ToolFailure {
            #expect(failure.status == .exited(3))
            #expect("\(failure)".contains("failed (exit status 3)"))
        }
        do {
            _ = try await ProcessRunner().capture(ToolCommand("sh", ["-c", "kill -9 $$"]))
            Issue.record("a killed sh did not fail")
        } catch let failure as ToolFailure {
            #expect(failure.status == .signalled(9))
        }
    }
}
