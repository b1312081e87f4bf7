"""The constants the data layer and the models share, defined once. `data_modules` reads them from here (with
`vrp.models.paths`, the only part of vrp it imports); `data_modules.batch` names them in the batch contract."""

IGNORE_INDEX = -100  # label of the positions the LM loss skips (torch's cross-entropy default)
VIDEO_TOKEN = "<video>"  # the one placeholder per prompt that the reasoner replaces by the visual tokens
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's pixel normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
