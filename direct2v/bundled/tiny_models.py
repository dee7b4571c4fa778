"""A tiny random-weight model shaped like Stable Diffusion 1.x, built offline in seconds.

It lets the renderer, its tests and the whole pipeline run without downloading anything: every
component has SD 1.5's class, layout and configuration keys (so up_blocks.2/.3 exist, the VAE
downsamples by 8, the scheduler is SD's PNDM, the tokenizer is CLIP's byte-level BPE with 77
tokens), only with very few channels and random weights. The output is noise-like images, but the
data flow (shapes, attention layers, prompt handling, latent schedule) is that of the real model.

The tokenizer's vocabulary is learned here from a small embedded English corpus, so that ordinary
prompts take a realistic number of tokens (whole common words, sub-words for rare ones) and the
77-token limit behaves as it does with the real CLIP vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPImageProcessorPil, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from direct2v.core.files import staged_directory

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_TOKENS = 77
BPE_VOCAB_SIZE = 1800  # the trainer's target, both 256-character alphabets included

#: SD 1.5's scheduler configuration (scheduler/scheduler_config.json of the original release).
SD15_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,  # PNDM does not take it; DDIM and the others read it from this config
}

CORPUS = """
A red fox runs across a snowy field at dawn, its breath visible in the cold air.
The camera slowly pans to the left, following a cyclist riding along a narrow mountain road.
A golden retriever jumps into a blue lake and swims back with a stick in its mouth.
Close-up of a cup of coffee on a wooden table, steam rising while rain falls outside the window.
An astronaut walks on the surface of the moon, leaving footprints in the grey dust.
A small boat sails on a calm sea under a bright orange sunset with a few clouds.
Wide shot of a busy city street at night, cars with glowing headlights and people crossing.
A woman in a yellow dress dances in a garden full of white and purple flowers.
A cat sleeps on a soft pillow next to a sunny window, then slowly opens its eyes.
The camera zooms in on an old clock tower as the hands move toward midnight.
A child builds a sandcastle on the beach while gentle waves wash over the shore.
A hot air balloon rises above green hills and a quiet village in the early morning.
Two horses gallop through a meadow, their manes flowing in the wind.
A chef chops fresh vegetables in a bright kitchen and tosses them into a pan.
Snow falls on a pine forest, covering the branches and the path between the trees.
A robot with shiny metal arms paints a picture of a mountain on a large canvas.
Fireworks explode in the dark sky over a river, reflecting in the water below.
A man in a black coat walks his dog through a park covered in autumn leaves.
A butterfly lands on a pink flower, opens its wings and flies away.
An aerial view of a waterfall pouring into a deep green valley surrounded by cliffs.
A train crosses a long stone bridge, smoke drifting behind it in the blue sky.
The sun rises behind a lighthouse standing on rocks at the edge of the ocean.
A panda eats bamboo while sitting in the shade of tall trees.
A girl with a red umbrella walks along a wet street lit by shop windows.
A candle flickers on a table in a dark room, casting long shadows on the wall.
Tracking shot of a runner sprinting along a track in a stadium full of people.
A bird builds a nest in the branches of an apple tree in spring.
Lightning strikes over the desert as heavy clouds roll across the horizon.
An old man reads a newspaper on a bench beside a fountain in the town square.
A spaceship flies past a giant ring planet with stars shining in the background.
Waves crash against a rocky coast, sending white spray high into the air.
A teddy bear sits on a shelf in a child's bedroom lit by a small lamp.
The camera tilts up from the ground to reveal a tall glass skyscraper.
A group of friends laugh around a campfire under a sky full of stars.
A turtle swims slowly through clear water above a colourful coral reef.
A baker takes a tray of warm bread out of the oven in a small shop.
Leaves float down a narrow stream that winds between mossy stones.
A skateboarder jumps over a ramp in an empty parking lot at sunset.
A herd of elephants walks across a dry plain toward a distant water hole.
A violinist plays on a stage under a single bright spotlight.
The moon rises over a quiet lake surrounded by dark mountains.
A squirrel gathers nuts at the foot of an oak tree in the fall.
A yellow taxi drives through heavy rain, its wipers moving back and forth.
A painter mixes blue and white paint on a palette beside an open window.
A penguin slides on its belly across the ice toward the water.
Slow motion shot of a drop of water falling into a glass of milk.
A knight in silver armour rides a black horse toward a castle on a hill.
A field of sunflowers sways in the warm summer wind under a clear sky.
A little robot rolls across a kitchen floor, picking up small toys.
A dragon flies over snowy mountains, breathing fire into the cold air.
A fisherman casts his net from a wooden boat at first light.
A kite with a long tail flies high above a sandy beach on a windy day.
The city skyline glows at dusk as lights turn on in thousands of windows.
A deer stands still in a misty forest, then turns its head toward the camera.
A woman writes in a notebook at a cafe table near a busy street.
A rocket launches from a pad, fire and smoke filling the bottom of the frame.
A frog jumps from one lily pad to another on a quiet pond.
A street musician plays guitar while people walk by and drop coins in his case.
The camera moves forward through a long hallway lined with old paintings.
An owl sits on a branch at night, its large eyes reflecting the moonlight.
A farmer drives a red tractor across a wide field of golden wheat.
Children play football on a dusty field between small houses.
A jellyfish drifts through dark blue water, glowing with soft light.
A steaming bowl of noodles is placed on a table with chopsticks beside it.
A climber reaches the top of a rocky peak and raises both arms.
A paper boat floats along a gutter after a summer storm.
A dog chases a ball across a green lawn in front of a white house.
A storm gathers over the ocean, dark clouds moving quickly across the sky.
A young woman rides a bicycle through a field of tulips in the Netherlands.
A tiger walks through tall grass, its orange and black stripes catching the light.
A glass of orange juice sits on a table in the morning sun.
Close-up of hands kneading dough on a wooden board dusted with flour.
The northern lights dance in green waves above a frozen lake.
A koala climbs slowly up the trunk of a eucalyptus tree.
A vintage car drives along a coastal road lined with palm trees.
A man plays the piano in a large empty hall with tall windows.
Rain drips from the edge of a roof into a puddle, making small ripples.
A flock of birds flies in formation across the pink evening sky.
A street market is crowded with people buying fruit, fish and flowers.
A lion rests on a rock and watches the savanna as the sun goes down.
A bee collects pollen from a bright yellow flower in a sunny garden.
An airplane takes off from a runway, its wheels lifting off the ground.
A small house with a red roof stands alone on a hill covered in snow.
Sparks fly as a blacksmith hammers a glowing piece of iron.
A girl blows out the candles on a birthday cake while her family claps.
A river flows through a canyon with steep red walls under a blue sky.
A monkey swings from branch to branch in a dense tropical jungle.
A lamp post lights a foggy street in an old European city at night.
A sailboat races across the bay with its white sails full of wind.
A boy feeds ducks at the edge of a pond in a city park.
The camera orbits around a statue in the middle of a sunny plaza.
A waterfall freezes into long columns of blue ice in the middle of winter.
A hummingbird hovers in front of a red flower, its wings a blur.
A woman in a white coat looks through a microscope in a bright laboratory.
Heavy snow falls on a quiet road as a single car drives slowly home.
A pirate ship with black sails sails through a stormy sea.
A family walks along the beach at sunset, holding hands.
A cactus stands alone in the sandy desert under the burning midday sun.
A whale rises out of the ocean and splashes back into the waves.
Beautiful, detailed, high quality, cinematic lighting, sharp focus, photorealistic, 4k.
Then the scene changes: the light becomes warmer, the shadows grow longer, and the wind stops.
Frame one shows the start of the action; frame two continues it; frame three ends it.
She smiles, turns around and walks toward the door; he waits, watches and follows her.
It's raining, they're running, we've arrived, I'm here, you'll see, he'd know.
"""


def _train_merges(corpus: str, clip: CLIPTokenizer) -> list[tuple[str, str]]:
    """Learn CLIP-style BPE merges on ``corpus``, reproducibly.

    Words are cut exactly as CLIP cuts them (``clip``'s normaliser and pre-tokeniser). The trainer
    breaks ties between equally frequent pairs by symbol id, and with ``end_of_word_suffix`` it
    numbers the end-of-word symbols ("t</w>") in hash-map order, which changes from run to run. So
    each word's last character is written as a private-use character of its own, which the trainer
    numbers in the sorted initial alphabet like any other, and turned back into "c</w>" afterwards.
    """
    backend = clip.backend_tokenizer
    alphabet = _byte_alphabet()
    final = {char: chr(0xE000 + i) for i, char in enumerate(alphabet)}  # Unicode private use area
    lines = []
    for line in corpus.strip().splitlines():
        words = backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(line))
        lines.append(" ".join(word[:-1] + final[word[-1]] for word, _ in words))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=alphabet + list(final.values()),
    )
    bpe.train_from_iterator(lines, trainer=trainer)
    suffixed = {private: char + "</w>" for char, private in final.items()}

    def restore(symbol: str) -> str:
        return symbol[:-1] + suffixed[symbol[-1]] if symbol[-1] in suffixed else symbol

    return [(restore(left), restore(right)) for left, right in json.loads(bpe.to_str())["model"]["merges"]]


def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP's byte-to-unicode table: the 256 printable characters standing for the bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[byte] for byte in range(256)]


def build_clip_tokenizer(path: Path, corpus: str = CORPUS) -> CLIPTokenizer:
    """Write vocab.json/merges.txt laid out like CLIP's, with merges learned on ``corpus``, and
    return the tokenizer loaded from them.

    CLIP's vocabulary is: the 256 byte characters, the same with the end-of-word marker ``</w>``,
    one entry per merge in merge order, then ``<|startoftext|>`` and ``<|endoftext|>``.
    """
    path.mkdir(parents=True, exist_ok=True)
    # An empty CLIP tokenizer supplies the exact normaliser and pre-tokeniser to train with.
    merges = _train_merges(corpus, CLIPTokenizer())
    alphabet = _byte_alphabet()
    tokens = alphabet + [char + "</w>" for char in alphabet] + ["".join(merge) for merge in merges] + [BOS, EOS]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}  # a merge may recreate a token
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges)
    (path / "merges.txt").write_text(merges_text, encoding="utf-8")
    return CLIPTokenizer(
        vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"), model_max_length=MAX_TOKENS
    )


def tiny_text_config(tokenizer) -> dict:
    """The tiny CLIP text transformer shared by the tiny SD and the tiny evaluation CLIP."""
    return dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


#: What every SD-1.x UNet and VAE share; the tiny model and SD 1.5 differ only in sizes.
SD_UNET_LAYOUT = {
    "in_channels": 4, "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
SD_VAE_LAYOUT = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
}
#: The tiny model's sizes (``attention_head_dim`` is diffusers' legacy name for the number of heads, as in SD 1.5).
TINY_UNET = {"sample_size": 8, "block_out_channels": (32, 32, 64, 64), "layers_per_block": 1,
             "attention_head_dim": 4, "cross_attention_dim": 32, "norm_num_groups": 8}
TINY_VAE = {"block_out_channels": (8, 16, 32, 32), "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64}


def build_tiny_sd(path: Path, seed: int = 0) -> Path:
    """Build the tiny SD-1.x-shaped model into ``path`` (replacing it) and return ``path``.

    The directory has SD 1.5's diffusers layout (model_index.json of a StableDiffusionPipeline,
    one subfolder per component, safetensors weights; no safety checker, and a stock CLIP image
    processor as feature_extractor only because diffusers' SD-family loaders require one), so both
    ``DirecT2VPipeline.from_local_dir`` and diffusers' own pipelines load it. The same ``seed``
    gives the same files (weights and tokenizer); the global torch RNG is left as it was.
    """
    path = Path(path)
    with staged_directory(path) as staging:
        tokenizer = build_clip_tokenizer(staging / "tokenizer")  # save_pretrained adds tokenizer.json beside
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(**SD_UNET_LAYOUT, **TINY_UNET)
            vae = AutoencoderKL(**SD_VAE_LAYOUT, **TINY_VAE)
            text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(tokenizer)))
        sd_pipeline(unet, vae, text_encoder, tokenizer).save_pretrained(staging, safe_serialization=True)
    return path


#: SD 2.x differs from 1.x in its text encoder (OpenCLIP's, in CLIPTextModel form: GELU), a UNet with
#: linear projections and more heads, and (2.1, 768 px) v-prediction with SD 2.1's DDIM scheduler.
SD2_UNET = {**TINY_UNET, "use_linear_projection": True, "attention_head_dim": (2, 4, 8, 8)}
SD2_SCHEDULER = {**SD15_SCHEDULER, "prediction_type": "v_prediction"}

#: SDXL's layout (two attention levels in three, the top one attention-free), with tiny sizes: the
#: UNet's context is the two text encoders side by side (32 + 32), its added embedding takes 6 time ids
#: of 8 channels each plus the second encoder's 32-wide pooled projection.
SDXL_UNET = {
    "in_channels": 4, "out_channels": 4, "sample_size": 8,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 32, 64), "layers_per_block": 1, "transformer_layers_per_block": (1, 1, 2),
    "attention_head_dim": (2, 4, 4), "cross_attention_dim": 64, "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 80,
    "norm_num_groups": 8,
}
#: SDXL's VAE scales latents by 0.13025 and overflows in fp16 (force_upcast).
SDXL_VAE = {**TINY_VAE, "scaling_factor": 0.13025, "force_upcast": True}
#: SDXL 1.0's scheduler configuration (Euler, "leading" timesteps).
SDXL_SCHEDULER = {**SD15_SCHEDULER, "timestep_spacing": "leading", "interpolation_type": "linear",
                  "use_karras_sigmas": False}


def build_tiny_sd2(path: Path, seed: int = 0) -> Path:
    """The tiny model shaped like Stable Diffusion 2.1 (v-prediction, linear projections, GELU text
    encoder), saved like ``build_tiny_sd``'s (a ``StableDiffusionPipeline`` directory)."""
    from diffusers import DDIMScheduler

    path = Path(path)
    with staged_directory(path) as staging:
        tokenizer = build_clip_tokenizer(staging / "tokenizer")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(**SD_UNET_LAYOUT, **SD2_UNET)
            vae = AutoencoderKL(**SD_VAE_LAYOUT, **TINY_VAE)
            text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(tokenizer), hidden_act="gelu"))
        pipeline = sd_pipeline(unet, vae, text_encoder, tokenizer)
        pipeline.scheduler = DDIMScheduler.from_config(SD2_SCHEDULER)
        pipeline.register_modules(scheduler=pipeline.scheduler)
        pipeline.save_pretrained(staging, safe_serialization=True)
    return path


def build_tiny_sdxl(path: Path, seed: int = 0) -> Path:
    """The tiny model shaped like SDXL 1.0 base, saved as ``StableDiffusionXLPipeline.save_pretrained``
    writes it: two CLIP text encoders (the second with a projection, its tokenizer padding with "!"
    as SDXL's does), the text-time UNet, SDXL's VAE scaling and Euler scheduler. The same ``seed``
    gives the same files; the global torch RNG is left as it was."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    path = Path(path)
    with staged_directory(path) as staging:
        tokenizer = build_clip_tokenizer(staging / "tokenizer")
        tokenizer_2 = build_clip_tokenizer(staging / "tokenizer_2")
        tokenizer_2.pad_token = "!"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(**SDXL_UNET)
            vae = AutoencoderKL(**SD_VAE_LAYOUT, **SDXL_VAE)
            text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(tokenizer)))
            text_encoder_2 = CLIPTextModelWithProjection(
                CLIPTextConfig(**tiny_text_config(tokenizer_2), projection_dim=32, hidden_act="gelu"))
        StableDiffusionXLPipeline(
            vae=vae.eval(), text_encoder=text_encoder.eval(), text_encoder_2=text_encoder_2.eval(),
            tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet.eval(),
            scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER), force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        ).save_pretrained(staging, safe_serialization=True)
    return path


def sd_pipeline(unet, vae, text_encoder, tokenizer) -> StableDiffusionPipeline:
    """SD-1.x components as the ``StableDiffusionPipeline`` whose ``save_pretrained`` writes SD 1.5's
    directory layout: SD 1.5's PNDM scheduler, no safety checker, and a stock CLIP image processor as
    feature_extractor only because diffusers' SD-family loaders require one."""
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=CLIPImageProcessorPil(),
        requires_safety_checker=False,
    )


def build_tiny_lora(model_dir: Path, path: Path, rank: int = 4, seed: int = 0, std: float = 0.05) -> Path:
    """A random LoRA for the UNet of ``model_dir``, saved as diffusers saves LoRAs (one safetensors file).

    Rank ``rank`` on every attention projection (to_q, to_k, to_v, to_out.0), ``lora_alpha = rank``
    (a delta of exactly ``up @ down``), both factors random from ``seed`` (peft starts the up factor
    at zero, which would make a LoRA that changes nothing). For tests and smoke runs of
    ``render.lora_dir``; a real LCM-LoRA has the same file layout.
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", local_files_only=True, use_safetensors=True)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(path, unet_lora_layers=layers, safe_serialization=True)
    return Path(path)
