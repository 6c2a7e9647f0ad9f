import Foundation
import Testing
@testable import RootfsSupport

/// Every saved fuzz input (the seed corpus and every crash the fuzzers ever
/// found, Fuzz/crashes/) replayed through its harness with a plain build: a
/// crash that was fixed stays fixed. The fuzzing itself runs in `.ci/run`.
@Suite struct FuzzCorpusTests {
    @Test(arguments: ["tree", "probe", "status"])
    func savedInputsReplayWithoutACrash(_ harness: String) async throws {
        let fuzz = Fixtures.productsDirectory + "/rootfs-fuzz"
        #expect(FileManager.default.isExecutableFile(atPath: fuzz), "swift build builds rootfs-fuzz")
        let corpus = Fixtures.repositoryRoot + "/Fuzz/corpus/" + harness
        let crashes = Fixtures.repositoryRoot + "/Fuzz/crashes/" + harness
        let inputs = try FileManager.default.contentsOfDirectory(atPath: corpus).count
            + FileManager.default.contentsOfDirectory(atPath: crashes).count
        let r = try await Fixtures.run(fuzz, ["replay", harness, corpus, crashes])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("\(inputs) inputs replayed"), "\(r.stdout)")
    }
}
