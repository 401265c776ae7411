import ArgumentParser
import Foundation
import KilnMachine
import KilnStore
import KilnSupport

struct ImageRemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove",
        abstract: "Delete a managed image or gallery version (by resource ID, with its disk), or forget an imported image (by URN; its file stays)."
    )

    @Argument(help: "A resource ID (/subscriptions/…/images/NAME or …/images/DEF/versions/X.Y.Z) or Publisher:Offer:Sku:Version.")
    var image: String

    @OptionGroup var stateFlags: StateFlags

    func run() async throws {
        let state = stateFlags.state
        do {
            if image.hasPrefix("/") {
                switch try StateStore.open(state).removeImage(id: image) {
                case .managedImage(let record): print("removed managed image \(record.id) and its disk \(record.disk.path)")
                case .galleryVersion(let record): print("removed gallery image version \(record.id) and its disk \(record.disk.path)")
                }
            } else {
                try ImageCatalog.locate(state: state).removeImported(urn: image)
                print("removed \(image)")
            }
        } catch {
            throw fail(error)
        }
    }
}
