"""DecAlign: the model (:mod:`.model`), its two variants as one option table (:mod:`.variants`)
and the converter of the authors' checkpoints (:mod:`.official`)."""

from alignkit_models.models.decalign.model import DecAlign
from alignkit_models.models.decalign.official import from_official_state_dict
from alignkit_models.models.decalign.variants import OPTIONS, VARIANTS, option_table, variant_options

__all__ = ["OPTIONS", "VARIANTS", "DecAlign", "from_official_state_dict", "option_table", "variant_options"]
