import ArgumentParser
import Foundation
import RootfsKit

struct ListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List the distros that can be built, and where each was found.")

    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print one JSON document.") var json = false

    func run() async throws {
        let dirs = global.distrosDirs
        let json = json
        try await CommandRunner.run {
            let listing = try await DistroListing.make(catalog: DistroCatalog.standard(distrosDirs: dirs))
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
                FileHandle.standardOutput.write(try encoder.encode(listing))
                print()
            } else {
                print(listing.table)
            }
        }
    }
}
